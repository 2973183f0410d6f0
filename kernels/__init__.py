"""kernels: the code that runs inside a Kaggle kernel, inlined by `kit render` into one script.

The rules every module here keeps (tests/test_house.py checks them):
- Imports: the standard library, tensorflow, keras, numpy, pandas, matplotlib, sklearn (what Kaggle's
  images have; jax on the TPU route and Kaggle's own `kaggle_datasets` only where they are looked
  for), and other kernel modules as ``from kernels.<module> import <name>`` (dropped when
  inlined). Never `kit`, never ``import kernels.x``, no ``__main__`` block.
- One namespace: once rendered every module shares one global namespace, so a top-level name is
  defined by one module only (`kit.render.source.load_modules` refuses a clash), and a private
  top-level name carries its module's prefix: ``_<module>_name`` (``_models_conv_bn``), or
  ``_<Module>Name`` for a class (``_MetricsPrepared``).
- Each module opens with a docstring saying what goes in (In:) and what comes out (Out:).
- The inline order is `kit.render.source.MODULE_ORDER`; a module imports only modules before it.
"""
