"""``python -m timm_xbn.evaluation ...`` = ``xbn-eval ...``; lets torchrun launch it as a module:
``torchrun --nproc_per_node=2 -m timm_xbn.evaluation robustness --model resnet50 ...``."""
from ..cli import eval_app

eval_app(prog_name="xbn-eval")
