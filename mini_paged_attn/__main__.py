"""``python -m mini_paged_attn serve MODEL_DIR``."""
from .cli import main

main()
