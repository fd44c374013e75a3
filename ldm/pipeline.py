"""Old import path of the pipeline class: the ``pipeline.py`` shim inside folders exported before the library was
split into subpackages imports it from here, so those folders still load with ``custom_pipeline=dir``."""

from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline  # noqa: F401
