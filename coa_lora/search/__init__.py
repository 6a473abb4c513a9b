"""The Pareto-based configuration search (METHOD.md §6): fronts and hypervolumes, the GP surrogate, candidates, the
search state and its rounds, the search inside a training run, and the view of a run's search for figures."""
from coa_lora.search.pareto import HypervolumePlane, non_dominated, segment_select
from coa_lora.search.rounds import search_round
from coa_lora.search.run_view import RunView, find_runs, open_run
from coa_lora.search.state import SearchSettings, SearchState
from coa_lora.search.surrogate import DEFAULT_ENCODING, compare_encodings, encoding_transform, fit_surrogate

__all__ = [
    "DEFAULT_ENCODING", "HypervolumePlane", "RunView", "SearchSettings", "SearchState", "compare_encodings",
    "encoding_transform", "find_runs", "fit_surrogate", "non_dominated", "open_run", "search_round", "segment_select",
]
