"""Configurations of a whole model (METHOD.md §2-3): one option per target matrix, the damage of every option on
every matrix, and the exact budget -> configuration allocator with its precomputed grid."""
from coa_lora.configs.allocate import Allocation, Allocator, allocate
from coa_lora.configs.allocation_grid import GridAllocator
from coa_lora.configs.damage import DamageTable, fisher_diagonal, matrix_damage
from coa_lora.configs.model_config import ModelConfig, ModelLayout, Target

__all__ = [
    "Allocation", "Allocator", "DamageTable", "GridAllocator", "ModelConfig", "ModelLayout", "Target", "allocate",
    "fisher_diagonal", "matrix_damage",
]
