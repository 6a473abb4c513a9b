"""The paper's comparison (Table 2's shape): one CoA-LoRA adapter against a LoRA trained for each configuration and
against Shared-LoRA, over seeds, at trained and unseen budgets; its plan, its run, its result files and report."""
from coa_lora.compare.markdown import results_markdown
from coa_lora.compare.plan import LABELS, METHODS, ComparePlan, RunSpec
from coa_lora.compare.report import (WITHIN_TRAINED, Comparison, find_comparisons, merge_results, read_results,
                                    read_why, write_results)
from coa_lora.compare.reference import Reference, read_reference, write_reference
from coa_lora.compare.run import check_folder, describe, run_comparison

__all__ = [
    "LABELS", "METHODS", "WITHIN_TRAINED", "ComparePlan", "Comparison", "Reference", "RunSpec", "check_folder",
    "describe", "find_comparisons", "merge_results", "read_reference", "read_results", "read_why", "results_markdown",
    "run_comparison", "write_reference", "write_results",
]
