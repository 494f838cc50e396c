from setuptools import find_packages, setup

APP_PARTS = ("train", "models", "benchmarks")

setup(
    name="revnet",
    version="0.1.0",
    description="Explicit reverse networks for PyTorch and Deep Defense (Yan, Guo & Zhang, NeurIPS 2018).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # the library, and the experiment code as one namespaced package (no generic top-level names such as
    # ``models`` or ``train``): the repository's train/, models/ and benchmarks/ folders are revnet_app's parts
    packages=find_packages(include=["revnet", "revnet.*"]) + ["revnet_app"]
    + [f"revnet_app.{p}" for p in APP_PARTS] + [f"revnet_app.{p}.{sub}" for p in APP_PARTS for sub in find_packages(p)],
    package_dir={"revnet_app": "revnet_app", **{f"revnet_app.{p}": p for p in APP_PARTS}},
    # the embedded MNIST subset, and the defended MNIST weights of models.pretrained (with their manifest)
    package_data={"revnet_app.train": ["assets/*"], "revnet_app.models": ["weights/*.pt", "weights/*.json"]},
    install_requires=["torch>=2.1", "torchvision>=0.16", "tqdm>=4.60", "matplotlib>=3.5"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "foolbox>=3.3", "pyautoattack>=0.2", "timm>=1.0",
                 # the documentation site (docs/, mkdocs.yml), built with --strict by tests/app/test_docs.py
                 "mkdocs-material>=9.5", "mkdocstrings[python]>=0.24"],
        # benchmarks/deepfool.py's second peer; it pins requests~=2.25 (a downgrade), so it is not in "test"
        "bench": ["torchattacks>=3.4"],
    },
)
