"""coa-lora explorer: `streamlit run app/main.py`. The frame (title, sidebar, shared state) and the router only;
each view lives in its own module."""
from __future__ import annotations

import streamlit as st
from common import explorer, sidebar

st.set_page_config(page_title="coa-lora explorer", page_icon=":material/memory:", layout="wide")
st.title("coa-lora explorer")
st.caption("One adapter for every bit budget: configuration-aware LoRA (CoA-LoRA) for mixed-precision quantized LLMs.")

explorer()
sidebar()
page = st.navigation([
    st.Page("search_view.py", title="Search", icon=":material/insights:", default=True),
    st.Page("instantiate_view.py", title="Instantiate", icon=":material/tune:"),
    st.Page("evaluate_view.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("generate_view.py", title="Generate", icon=":material/edit_note:"),
    st.Page("train_view.py", title="Train", icon=":material/model_training:"),
    st.Page("compare_view.py", title="Compare", icon=":material/leaderboard:"),
    st.Page("about_view.py", title="About", icon=":material/school:"),
])
page.run()
