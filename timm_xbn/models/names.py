"""Names of the registered models and their pretrained tags (no imports: the registry and the
checkpoint tools both read them)."""
from typing import Dict

__all__ = ["HUB_ORG", "PAPER_ARCHS", "AUTHORS_LAYOUT", "AUTHORS_TAG", "BN_STEM_SUFFIX"]

#: The Hub organisation of the ``xbn_*`` tags' weights: ``<HUB_ORG>/<name>.<tag>``.
HUB_ORG = "timm-xbn"
#: The base networks of the paper's Table 2, whose XBNBlock versions the authors' code builds.
PAPER_ARCHS = ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")
#: base architecture -> the registered name of the authors' released layout (BFN stem, P2, GN 64).
AUTHORS_LAYOUT: Dict[str, str] = {base: f"xbn_{base}" for base in PAPER_ARCHS}
#: The pretrained tag of the authors' ImageNet weights (imported with ``xbn-convert ARCH --authors``).
AUTHORS_TAG = "authors_in1k"
#: Suffix of this project's variants with a BatchNorm stem (the authors' stem norm is batch-free).
BN_STEM_SUFFIX = "_bnstem"
