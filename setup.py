from setuptools import find_packages, setup

setup(
    name="pi_stream_source",
    version="0.1.0",
    description="Spark Structured Streaming source for PI Web API channels, with gap fill from the PI "
                "archive and exactly-once landing in Delta Lake",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pi_stream_source", "pi_stream_source.*"]),
    package_data={"pi_stream_source": ["resources/*"]},
    python_requires=">=3.10",
    # pyspark is not a hard dependency: Databricks runtimes bring their own. Use the [spark] extra locally.
    install_requires=[
        "websocket-client>=1.7,<2",
        "orjson>=3.9",
        "msgspec>=0.18",
        "requests>=2.31",
        "databricks-sdk>=0.30",
        "pyarrow>=14",
        "numpy>=1.22",
    ],
    extras_require={
        # pyspark[connect] brings what `spark-pipelines` (open-source declarative pipelines) needs
        # pyyaml: `pi-stream run --config run.yml` at the edge
        "spark": ["pyspark[connect]==4.2.0", "delta-spark==4.4.1", "pandas>=2.0,<3", "pyyaml>=6"],
        "simulator": ["aiohttp>=3.9,<4"],
        # python-gssapi builds against MIT krb5: apt-get install libkrb5-dev (gcc) first
        "kerberos": ["gssapi>=1.8"],
        # coverage-guided fuzzing of the parser (bench/fuzz_parse.py); prebuilt wheels, no compiler needed
        "fuzz": ["atheris>=2.3"],
        # the WebSocket client comparison (bench/ws_client_bench.py): the clients it measures beside websocket-client
        "wsbench": ["picows>=2.3", "websockets>=13", "aiohttp>=3.9,<4", "psutil>=5.9", "cryptography>=41"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "chispa>=0.10", "hypothesis>=6.100",
                "jsonschema>=4.20", "trustme>=1.2", "cryptography>=41", "websockets>=13", "pyyaml>=6", "psutil>=5.9",
                "databricks-bundles>=1.22,<2", "build>=1.0", "matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["pi-stream=pi_stream_source.cli:main"]},
)
