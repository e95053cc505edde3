"""rskeras: rslearn's training stack on TensorFlow/Keras."""

from setuptools import find_packages, setup

setup(
    name="rskeras",
    version="0.1.0",
    description="TensorFlow/Keras reimplementation of the rslearn training stack",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rskeras", "rskeras.*"]),
    package_data={"rskeras.models.olmoearth_pretrain": ["norm_stats.json"]},
    python_requires=">=3.11",
    install_requires=[
        # tensorflow-cpu on CPU machines; use the `gpu` extra (tensorflow[and-cuda]) on GPU machines.
        "tensorflow-cpu>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "rasterio>=1.4,<2",
        "shapely>=2.0,<3",
        "pyyaml>=6",
        "numpy>=1.26",
        "tqdm>=4.60",
        "tensorboard>=2.20",
    ],
    entry_points={"console_scripts": ["rskeras = rskeras.commands:main"]},
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "litert": ["ai-edge-litert>=2.0"],
        "torch": ["torch>=2.2"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ai-edge-litert>=2.0",
            "safetensors>=0.4",
            "grpcio>=1.60",
        ],
    },
)
