"""`python -m finetuning_suite <command> ...`: the same as the `finetune` command."""
import sys

from .cli.main import main

sys.exit(main())
