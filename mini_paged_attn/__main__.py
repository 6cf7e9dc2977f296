"""``python -m mini_paged_attn serve MODEL_DIR``."""
from .cli import main

if __name__ == "__main__":
    main()
