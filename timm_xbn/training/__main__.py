"""``torchrun --nproc_per_node=N -m timm_xbn.training -c RECIPE --data-dir DIR [train.py flags]``."""
from .main import main

raise SystemExit(main())
