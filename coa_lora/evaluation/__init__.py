"""Evaluation (METHOD.md §8): log-likelihood scoring as lm-evaluation-harness does it, the embedded multiple-choice
tasks, held-out perplexity, and the Evaluator that caches results by weights, configuration and adapter."""
from coa_lora.evaluation.evaluator import EvalOptions, Evaluator, results_table
from coa_lora.evaluation.generation import GenerateOptions, first_divergence, prompt_ids
from coa_lora.evaluation.loglik import EvaluationCancelled, ScoringOptions, encode_pair
from coa_lora.evaluation.perplexity import PerplexityOptions, PerplexityResult, heldout_perplexity
from coa_lora.evaluation.scoring import ItemResult, TaskResult, evaluate_task, paired_difference
from coa_lora.evaluation.tasks import MCItem, Task, embedded_tasks, load_task

__all__ = [
    "GenerateOptions", "first_divergence", "prompt_ids",
    "EvalOptions", "EvaluationCancelled", "Evaluator", "ItemResult", "MCItem", "PerplexityOptions",
    "PerplexityResult", "ScoringOptions", "Task", "TaskResult", "embedded_tasks", "encode_pair", "evaluate_task",
    "heldout_perplexity", "load_task", "paired_difference", "results_table",
]
