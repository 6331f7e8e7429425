"""Downstream tasks as data: loaders for the raw files, one prompt template per task (for SFT
and evaluation alike), answer choices or generation settings, and the metric.

    from biomamba.tasks import get_task
    task = get_task("pubmedqa")
    examples = task.load("test", data_root="../shared/data")
    prompt, target = task.render(examples[0])
"""

from biomamba.tasks.prompts import Encoded, Prompt, Template, collate, encode_example, pack
from biomamba.tasks.registry import Task, get_task, task_names

__all__ = ["Encoded", "Prompt", "Task", "Template", "collate", "encode_example", "get_task", "pack", "task_names"]
