"""tfp_advbnn: Adv-BNN (Liu et al., ICLR 2019) in TensorFlow Probability."""

from setuptools import find_packages, setup

setup(
    name="tfp_advbnn",
    version="0.1.0",
    description="Adversarially trained Bayesian neural networks (Adv-BNN) with TFP.",
    packages=find_packages(include=["tfp_advbnn", "tfp_advbnn.*", "trainers", "trainers.*"]),
    python_requires=">=3.10",
    # The stack that works together: TFP layers are Keras-2 (tf_keras) layers.
    install_requires=[
        "tensorflow==2.21.*",
        "tensorflow-probability==0.25.*",
        "tf-keras==2.21.*",
        "tensorflow-datasets>=4.9,<5",
        "importlib_resources>=6",  # tfds's download and prepare path imports it
        "keras-tuner==1.4.8",
        "scikit-learn>=1.3",  # KerasTuner's Bayesian optimization
        "grpcio>=1.60",  # the chief's oracle server of a distributed search
        "tensorboard>=2.20",
        "absl-py>=2.0",
        "numpy>=1.26",
        "matplotlib>=3.8",
        # PredictionLog / PredictRequest protos of the TF Serving warm-up file (export.py);
        # its 2.21 release requires tensorflow>=2.21,<3, so it keeps the pinned TensorFlow.
        "tensorflow-serving-api==2.21.*",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "cleverhans==4.0.0",
            # The Square attack and the independent-implementation check run in CI too.
            "adversarial-robustness-toolbox==1.20.*",
        ],
        # Square Attack (a gradient-free check) through the Adversarial Robustness Toolbox.
        "attacks": ["adversarial-robustness-toolbox==1.20.*"],
    },
)
