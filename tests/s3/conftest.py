"""A real S3-compatible server for the object-storage tests: moto's standalone server on
127.0.0.1 (requests go over HTTP through pyarrow's S3 client, nothing is mocked), with
stores written locally and uploaded object by object."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actstore.store.arrays import Layout
from actstore.store.synthetic import write_synthetic_run

BUCKET = "acts"


@dataclass(frozen=True)
class S3:
    """The server and its bucket."""

    endpoint: str
    fs: Any
    """A pyarrow S3 filesystem that may write (the tests' uploader)."""

    def upload(self, local: Path, prefix: str) -> str:
        """Copy the store ``local`` to ``s3://BUCKET/prefix``, object by object."""
        import pyarrow.fs as pafs

        pafs.copy_files(
            str(local),
            f"{BUCKET}/{prefix}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )
        return f"s3://{BUCKET}/{prefix}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """moto's server on a free port, the AWS environment pointing at it, and a bucket."""
    moto_server = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        try:
            yield S3(endpoint, fs)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float16 run in 2 parts of 2 MiB shards (8 KiB chunks), with a saved map and a
    saved sparse dictionary: what the remote copy is compared with."""
    from actstore.cli import main

    path = tmp_path_factory.mktemp("s3") / "local.acts"
    write_synthetic_run(
        path,
        "a",
        n_docs=250,
        tokens_per_doc=80,
        d=128,
        dtype="float16",
        num_parts=2,
        layout=Layout(chunk_rows=32, shard_rows=8192),
        vocab_size=200,
        centroids=True,
    )
    rows = "SELECT row FROM tokens WHERE run = 'a' AND row < 1500"
    common = ["--run", "a", "--rows", rows]
    fit = ["map", "fit", str(path), *common, "--x", "hidden.0", "--y", "hidden.1"]
    assert main([*fit, "--name", "m", "--cv", "none", "--alphas", "1"]) == 0
    learn = ["sparse", "learn", str(path), *common, "--source", "hidden.1", "--name", "sp"]
    assert main([*learn, "--n-atoms", "8", "--k", "2", "--max-batches", "2"]) == 0
    return path


@pytest.fixture(scope="session")
def s3_store(s3: S3, local_store: Path) -> str:
    """``local_store`` uploaded: its ``s3://`` URL."""
    return s3.upload(local_store, "stores/syn.acts")
