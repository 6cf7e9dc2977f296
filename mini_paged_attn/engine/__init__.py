"""The serving engine behind ``LLM``: scheduler, model runner, sampler, sequences."""
from .llm_engine import LLMEngine
from .scheduler import Scheduler

__all__ = ["LLMEngine", "Scheduler"]
