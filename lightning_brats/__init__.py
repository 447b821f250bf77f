"""lightning-brats: brain-tumour segmentation experiments on multimodal MRI.

Importing the package registers the OmegaConf resolvers the configs in ``conf/`` use:
``${len:${data.modalities}}`` (input channels) and ``${len:${data.regions}}`` (outputs).
"""

from omegaconf import OmegaConf

__version__ = "0.1.0"

if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda value: len(value))
