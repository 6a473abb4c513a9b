"""coa-lora explorer: `streamlit run app/main.py`. The frame (title, sidebar, shared state) and the router only;
each view lives in its own module."""
from __future__ import annotations

import streamlit as st
from common import apply_link, link_page, model_ready, sidebar, view_link

st.set_page_config(page_title="coa-lora explorer", page_icon=":material/memory:", layout="wide")
st.title("coa-lora explorer")
st.caption("One adapter for every bit budget: configuration-aware LoRA (CoA-LoRA) for mixed-precision quantized LLMs.")

model_ready()  # starts the model's load in the background; the Search, Compare and About pages do not wait for it
apply_link()
sidebar()
start = link_page()  # a link may open on any page (?page=generate)
pages = [("search_view.py", "Search", ":material/insights:"), ("instantiate_view.py", "Instantiate", ":material/tune:"),
         ("evaluate_view.py", "Evaluate", ":material/fact_check:"),
         ("generate_view.py", "Generate", ":material/edit_note:"),
         ("train_view.py", "Train", ":material/model_training:"),
         ("compare_view.py", "Compare", ":material/leaderboard:"), ("about_view.py", "About", ":material/school:")]
page = st.navigation([st.Page(f, title=title, icon=icon, default=f == start) for f, title, icon in pages])
shown = f"{page.url_path}.py" if page.url_path else start
st.sidebar.caption(f"Link to this view (append it to the explorer's address): `{view_link(shown)}`")
page.run()
