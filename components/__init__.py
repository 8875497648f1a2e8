"""KFP v2 components, one per pipeline stage: typed wrappers over :mod:`gdmix.stages`.

Each ``components/<stage>/component.py`` defines one lightweight Python component whose body
only converts KFP artifacts to URIs and calls the library; ``component.yaml`` beside it is the
same component compiled, for reuse from other pipelines (``kfp.components.load_component_from_file``).
"""
