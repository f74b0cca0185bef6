"""Pull and import progress for people: a bar per layer (bytes, speed, time left) on a terminal, plain lines
otherwise. Fed by the admin service's WatchProgress stream, read in a thread while the pull's (or import's) own
call runs in the foreground; written to stderr, so that stdout carries only the answer, as crictl's does.
tqdm draws the bars; it is imported only when a terminal is there to draw them on."""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, TextIO

from cripy.ctl.admin import ProgressStream

LINE_INTERVAL = 5.0  # plain lines: a downloading layer's bytes are repeated this often
FINAL_WAIT = 2.0  # after the call returned: how long the last snapshot may take to arrive
FINISHED = ("done", "present", "failed")


class View(Protocol):
    def show(self, snapshot: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Follow:
    """`with Follow(stream, stderr):` around the call: shows its progress while it runs."""

    def __init__(self, stream: ProgressStream, out: TextIO, bars: bool | None = None) -> None:
        self._stream = stream
        if bars is None:
            bars = out.isatty()
        self._view: View = BarView(out) if bars else LineView(out)
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Follow:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self._thread.join(FINAL_WAIT)  # the stream ends by itself with the operation's last snapshot
        self._stream.cancel()
        self._thread.join(FINAL_WAIT)
        self._view.close()

    def _run(self) -> None:
        for snapshot in self._stream:
            self._view.show(snapshot)


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def human_bytes(count: float) -> str:
    if count < 1000:
        return f"{count:.0f}B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000:
            break
    return f"{count:.1f}{unit}"


class BarView:
    """One tqdm bar per layer, in the manifest's order, kept on screen when done."""

    def __init__(self, out: TextIO) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._out = out
        self._bars: dict[str, Any] = {}
        self._shown: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def show(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            for layer in snapshot["layers"]:
                digest, state = layer["digest"], layer["state"]
                done = layer["size"] if state == "present" else layer["done"]
                if self._shown.get(digest) == (done, state):
                    continue  # unchanged: a finished bar keeps the speed it finished with
                self._shown[digest] = (done, state)
                bar = self._bars.get(digest)
                if bar is None:
                    bar = self._bars[digest] = self._tqdm(
                        total=layer["size"], desc=short_digest(digest), unit="B", unit_scale=True,
                        unit_divisor=1000, position=len(self._bars), leave=True, file=self._out,
                        dynamic_ncols=True, mininterval=0)
                if done >= bar.n:
                    bar.update(done - bar.n)
                else:  # a download that started over
                    bar.reset(total=layer["size"])
                    bar.update(done)
                bar.set_postfix_str(state, refresh=True)
                if state in FINISHED:
                    bar.close()  # now, so that it keeps the speed it finished with

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()


class LineView:
    """A line when a layer changes state, and every LINE_INTERVAL seconds while it downloads."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._said: dict[str, tuple[str, float]] = {}

    def show(self, snapshot: dict[str, Any]) -> None:
        now = time.monotonic()
        for layer in snapshot["layers"]:
            said = self._said.get(layer["digest"])
            if said is not None and said[0] == layer["state"] and (
                    layer["state"] not in ("downloading", "copying") or now - said[1] < LINE_INTERVAL):
                continue
            self._said[layer["digest"]] = (layer["state"], now)
            self._out.write(f"{short_digest(layer['digest'])}: {layer['state']} "
                            f"{human_bytes(layer['done'])}/{human_bytes(layer['size'])}\n")
        self._out.flush()

    def close(self) -> None:
        self._out.flush()
