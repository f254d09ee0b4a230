"""Memory budget of a training run: store, loader buffers, decoded images, activations, and the one recommendation.

Loader buffers for sainet: `prefetch` finished batches queued, one batch being rendered, the decoded
sources of a batch (the largest `batch` decode sizes of the data: every image's header is read, as
pack does), the mosaic partner history (`loaders.loader.PARTNER_BYTES`). Ultralytics' DataLoader
holds workers x prefetch_factor (2) batches, each worker a process with its own dataset copy;
`cache=ram` holds every image resized to imgsz, once per DDP rank.

The model's training memory on the device it runs on (host RAM on the CPU, GPU memory on CUDA):

    activations = SAVED_BYTES_PER_PIXEL[scale][fp32 | amp] x batch x H x W x PEAK_FACTOR[device]
    model       = parameters x 16 (fp32 weights, gradients, two Adam moments)   (+ 0.6 GB CUDA context)

`SAVED_BYTES_PER_PIXEL` is an exact count (benchmarks/activation_bytes.py): the bytes of the tensors
autograd saves for backward in one training forward, per input pixel, measured as the slope between
two shapes (it is linear in batch x H x W; tests/test_memory_plan.py checks it against a real
forward at another shape). `PEAK_FACTOR` covers what a training step holds on top of them (the
backward's gradients and workspaces): on the CPU the peak RSS growth of a whole step (forward, loss,
backward) measured 1.04-1.18x the saved bytes (yolov8n 2x256x320 and 4x320x320, yolov8s 2x480x480,
yolov8m 2x320x320), so 1.3 with a margin; on CUDA Ultralytics' reported
GPU_mem (the caching allocator's reserve) is 1.24-1.63x the saved AMP bytes of n/s/m/l/x.
"""

from __future__ import annotations

import collections
import heapq
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cache_tools.plan import StoreEstimate, check_fits, estimate_store, fs_info, human_bytes
from sainet.core.errors import CapacityError, SainetError, SettingsError
from sainet.core.geometry import format_imgsz, parse_wxh
from sainet.core.parallel import default_threads
from sainet.profiles import Profile
from sainet.settings import parse_bytes

__all__ = ["Budget", "estimate_budget", "SAVED_BYTES_PER_PIXEL", "PEAK_FACTOR", "activation_bytes", "DecodeSizes",
           "MemoryPlan", "Recommendation", "recommend", "recommend_for", "describe_source", "estimate_source", "plan_memory",
           "check_allocation", "largest_fitting", "check_loader_memory", "check_synth", "SYNTH_BYTES_PER_PIXEL",
           "store_decode_sizes", "decode_bytes"]

#: Bytes autograd saves for backward per input pixel per image in a training forward, (fp32, amp),
#: by YOLOv8 scale: `python benchmarks/activation_bytes.py` on the CPU (amp = bf16 autocast there).
SAVED_BYTES_PER_PIXEL = {"n": (462.0, 232.5), "s": (880.5, 443.2), "m": (1580.6, 793.7), "l": (2454.5, 1230.2),
                         "x": (3065.1, 1536.3)}
#: A training step's peak over the saved bytes, by device type (see the module docstring).
PEAK_FACTOR = {"cpu": 1.3, "cuda": 1.65}
_PARAMS = {"n": 3.2e6, "s": 11.2e6, "m": 25.9e6, "l": 43.7e6, "x": 68.2e6}
_CUDA_CONTEXT = 0.6e9
_ULTRA_WORKER_BYTES = 1.2e9  # a DataLoader worker process (torch + dataset copy), measured order of magnitude
#: `sainet synth`'s peak bytes per pixel of one frame (float32 layers and the sensor-grain noise):
#: the peak RSS growth of one frame measured 76 B/px at 2000x1500, 65 at 6000x4000.
SYNTH_BYTES_PER_PIXEL = 80
#: Encoded bytes per pixel `sainet synth` keeps per image: ~0.16 measured at 1440x808 q90
#: (benchmarks/README.md, packing: ~190 KB per image); bounded at 0.5 for higher qualities.
SYNTH_JPEG_BYTES_PER_PIXEL = 0.5


def model_scale(model: str) -> str:
    m = re.search(r"yolov?\d+([nsmlx])", str(model).lower())
    return m.group(1) if m else "s"


def activation_bytes(model: str, imgsz: tuple[int, int], batch: int, *, amp: bool, device: str = "cuda") -> int:
    """Training activations of `model` at `imgsz` (h, w) and `batch` on `device` ("cpu" or "cuda"), peak included."""
    fp32, half = SAVED_BYTES_PER_PIXEL[model_scale(model)]
    return int((half if amp else fp32) * batch * imgsz[0] * imgsz[1] * PEAK_FACTOR[device])


@dataclass(frozen=True)
class DecodeSizes:
    """The largest decoded-image sizes of a data set (bytes, descending; at most `KEEP` of them).

    A loader decodes a batch's sources into reused per-slot buffers, so a batch costs at most the
    sum of the `batch` largest decode sizes, whatever order the sampler draws.
    """

    largest: tuple[int, ...] = ()
    images: int = 0
    largest_hw: tuple[int, int] | None = None  # (h, w) of the largest image
    refused: int = 0  # images whose header sainet refuses (corrupt, or above imaging.MAX_PIXELS)
    #: every (h, w) size with its image count: the loaders' own sizing rules apply to these (their
    #: partner count to the median image, their history's sample region to every size)
    hw_counts: tuple[tuple[int, int, int], ...] = ()

    KEEP = 4096

    def batch_bytes(self, batch: int) -> int:
        return int(sum(self.largest[:batch]))

    def median_wh(self) -> tuple[int, int] | None:
        """The (w, h) a loader sizes its partner count by: the median width and height, as
        `loaders.loader.SainetLoader._partner_batches` takes them; None without sizes."""
        if not self.hw_counts:
            return None
        a = np.asarray(self.hw_counts, np.int64)
        w0, h0 = (int(v) for v in np.median(np.repeat(a[:, [1, 0]], a[:, 2], axis=0), axis=0))
        return w0, h0

    def most(self, rule: Any) -> int:
        """The largest `rule(w, h)` over the sizes (0 without sizes)."""
        return max((int(rule(w, h)) for h, w, _ in self.hw_counts), default=0)

    @classmethod
    def collect(cls, sizes: Any, refused: int = 0) -> DecodeSizes:
        """From an iterable of ((h, w), decode bytes); one pass, nothing but the largest kept."""
        heap: list[int] = []
        n, big = 0, (0, None)
        counts: collections.Counter = collections.Counter()
        for hw, nbytes in sizes:
            n += 1
            counts[tuple(hw)] += 1
            if nbytes > big[0]:
                big = (nbytes, hw)
            if len(heap) < cls.KEEP:
                heapq.heappush(heap, nbytes)
            elif nbytes > heap[0]:
                heapq.heapreplace(heap, nbytes)
        return cls(tuple(sorted(heap, reverse=True)), n, big[1], refused, tuple((h, w, c) for (h, w), c in sorted(counts.items())))

    @classmethod
    def uniform(cls, images: int, hw: tuple[int, int]) -> DecodeSizes:
        """`images` images of one size (h, w), decoded at full size."""
        return cls((hw[0] * hw[1] * 3,) * min(images, cls.KEEP), images, hw, 0, ((hw[0], hw[1], images),) if images else ())


def decode_bytes(info: Any, imgsz: tuple[int, int]) -> int:
    """Bytes a train decode of `info` (`sainet.core.imaging.ImageInfo`) holds at the training shape
    `imgsz`: the decoder's own reduced-DCT rule for JPEG; other formats decode at full size, through
    an intermediate of their stored channels and bit depth."""
    from loaders.decode import Decoder
    from sainet.core.imaging import scaled_bytes

    if info.format == "jpeg" and info.channels in (1, 3):
        return scaled_bytes(info, Decoder(None, imgsz).min_size(*info.size))  # type: ignore[arg-type]
    px = info.width * info.height
    return px * 3 + px * info.channels * max(1, info.bit_depth // 8)


@dataclass
class Budget:
    frame_bytes: int
    sainet_loader_bytes: int  # per rank
    ultralytics_loader_bytes: int  # per rank
    ultralytics_ram_cache_bytes: int  # per rank
    vram_bytes: int  # per GPU: activations (CUDA) + model + CUDA context
    activation_bytes: int = 0  # on the device the run uses
    model_bytes: int = 0  # weights, gradients, optimizer state
    decode_bytes: int = 0  # one batch of decoded sources (in sainet_loader_bytes)
    val_loader_bytes: int = 0  # the val loader's batch buffers and decode buffers (in sainet_loader_bytes)

    @property
    def cpu_train_bytes(self) -> int:
        """Host RAM of the model's training step when it runs on the CPU."""
        return self.activation_bytes + self.model_bytes

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_budget(*, images: int, imgsz: tuple[int, int], batch: int, threads: int, prefetch: int, workers: int,
                    model: str = "yolov8s.yaml", source_hw: tuple[int, int] | None = None, amp: bool = True,
                    decode: DecodeSizes | None = None, device: str = "cuda", val_batch: int | None = None,
                    processes: bool = False, resample: str = "fast") -> Budget:
    """The memory of one rank's training run; `device` ("cpu" or "cuda") says where activations live
    (and, on CUDA, that batches are pinned). `val_batch`: the val loader's batch (None: Ultralytics' for
    detection, twice `batch`; 0: no val loader, a benchmark's single loader), whose buffers the sainet
    loader bytes include. `processes`: the loaders build batches in `threads` assembler processes
    (``shm-mp``, ``lmdb-mp``), not threads. `resample`: the loaders' (`loaders.decode.RESAMPLE`)."""
    H, W = imgsz
    frame = H * W * 3
    sh, sw = source_hw or (decode.largest_hw if decode and decode.largest_hw else imgsz)
    decoded = decode.batch_bytes(batch) if decode and decode.largest else batch * sh * sw * 3
    vb = 2 * batch if val_batch is None else val_batch
    lb = _LoaderBytes(batch, frame, _val_frame(imgsz, decode), threads, prefetch,
                      _Samples.of(decode, (sh, sw), imgsz, resample, batch), pinned=device != "cpu")
    sainet, val = (lb.processes(), lb.processes(vb)) if processes else (lb.threads(decoded), lb.threads(decoded, vb))
    ultra = workers * 2 * batch * frame + workers * int(_ULTRA_WORKER_BYTES)
    r = max(H, W) / max(sh, sw)  # Ultralytics caches images with the long side resized to imgsz
    cache = int(images * sh * sw * 3 * r * r)
    scale = model_scale(model)
    on_cuda = device != "cpu"
    act = activation_bytes(model, imgsz, batch, amp=amp and on_cuda, device="cuda" if on_cuda else "cpu")
    weights = int(_PARAMS[scale] * 16)
    vram = activation_bytes(model, imgsz, batch, amp=amp, device="cuda") + weights + int(_CUDA_CONTEXT)
    return Budget(frame, int(sainet + val), int(ultra), cache, vram, act, weights, int(decoded), int(val))


def _val_frame(imgsz: tuple[int, int], decode: DecodeSizes | None) -> int:
    """Bytes of one val image: at a square `imgsz` the val loader takes Ultralytics' rect val shape
    (`rect_val_shape` at stride 32; a P6 model's 64 adds up to a stride more) when the sizes are known."""
    from sainet.core.geometry import rect_val_shape

    H, W = imgsz
    if H == W and decode is not None and decode.hw_counts:
        shape = rect_val_shape(np.asarray([(w, h) for h, w, _ in decode.hw_counts]), H)
        if shape is not None:
            return shape[0] * shape[1] * 3
    return H * W * 3


@dataclass(frozen=True)
class _Samples:
    """What a loader's decoded train samples take, by the loaders' own rules
    (`loaders.decode.Decoder.train_bytes` for the resample mode): `region`, the largest sample (a
    process loader's history region per sample); `partners`, the recent batches kept for mosaic
    partners (`loaders.loader.partner_count` of the median image); `full`, a full-size decode (an
    eval letterbox's, and a two-stage train decode's, per decode thread); `two_stage`: resample
    "ultralytics" (each decode thread holds a full-size decode); `raw`: a raw store (read in place)."""

    region: int
    partners: int
    full: int
    two_stage: bool
    raw: bool

    @classmethod
    def of(cls, decode: DecodeSizes | None, hw: tuple[int, int], imgsz: tuple[int, int], resample: str,
           batch: int) -> _Samples:
        from loaders.decode import Decoder
        from loaders.loader import partner_count

        rule = Decoder(None, imgsz, resample).train_bytes  # type: ignore[arg-type]
        full = hw[0] * hw[1] * 3
        if decode is not None and not decode.largest and decode.images:  # a raw store: frames read in place
            return cls(0, 0, imgsz[0] * imgsz[1] * 3, False, True)
        median = decode.median_wh() if decode else None
        region = decode.most(rule) if decode and decode.hw_counts else rule(hw[1], hw[0])
        return cls(region, partner_count(batch, rule(*median) if median else region), full, resample != "fast", False)


@dataclass(frozen=True)
class _LoaderBytes:
    """Host bytes of one loader (train, or val at batch `vb`): its batch buffers (a pool, or pinned
    batches on CUDA), its decode buffers, and for the process loaders their slot file and processes."""

    batch: int
    frame: int
    val_frame: int
    workers: int  # decode threads, or assembler processes
    prefetch: int
    samples: _Samples
    pinned: bool

    def batches(self, b: int, assemblers: int, val: bool = False) -> int:
        """The batch buffers: the loader's CPU pool (`SainetLoader.pool_buffers`, full while the training
        step is slower than the loader), or on CUDA fresh pinned batches, as many as the epoch holds at
        once (queued, in assembly, the consumer's), each a power of two in torch's caching host allocator."""
        from loaders.loader import SainetLoader

        size = b * (self.val_frame if val else self.frame)
        if self.pinned:
            return (self.prefetch + assemblers + 1) * (1 << max(0, size - 1).bit_length())
        return SainetLoader.pool_buffers(size, self.prefetch) * size

    def threads(self, decoded: int, vb: int | None = None) -> int:
        """The thread loader. Train: its batches, a batch of decoded sources (`decoded`), two frames per
        thread, the partner history, and with two stages a full-size decode per thread. Val (`vb`): its
        batches and a full-size decode per thread."""
        from loaders.loader import PARTNER_BYTES, SainetLoader

        s, n = self.samples, self.workers
        if vb is not None:
            return self.batches(vb, SainetLoader.assemblers, val=True) + n * s.full if vb else 0
        decoded = max(decoded, self.batch * s.region) + (n * s.full if s.two_stage else 0)
        return self.batches(self.batch, SainetLoader.assemblers) + decoded + n * 2 * self.frame + PARTNER_BYTES

    def processes(self, vb: int | None = None) -> int:
        """The process loaders (`loaders.procs.ProcLoader.host_bytes`). Train: the slot file's shared
        partner history (the partner batches plus one set per batch in flight; without partners each
        process decodes a batch into its own buffers), and with two stages a full-size decode per
        process. Val (`vb`): a full-size decode per process. On CUDA, pinned copies of the slots too."""
        from loaders.procs import ProcLoader
        from loaders.shared_history import SharedHistory

        s, n, b = self.samples, self.workers, self.batch if vb is None else vb
        if not b:
            return 0
        slot = b * (self.frame if vb is None else self.val_frame)
        slots = ProcLoader.slot_count(slot, n, self.prefetch)
        pinned = self.batches(b, ProcLoader.tasks_in_flight(n, slots), val=vb is not None) if self.pinned else 0
        if vb is not None:
            history, own = (lambda a: 0), s.full
        elif s.partners:
            history, own = (lambda a: SharedHistory.nbytes(s.partners + a, b, s.region)), 0
        else:
            history, own = (lambda a: 0), 0 if s.raw else b * s.region
        own += s.full if vb is None and s.two_stage else 0
        return pinned + ProcLoader.host_bytes(slot_bytes=slot, processes=n, prefetch=self.prefetch,
                                              history=history, per_process=own)


def largest_fitting(fits: Any, most: int) -> int:
    """The largest batch in 1..`most` for which `fits(batch)` holds (0: none); memory grows with the batch."""
    lo, hi = 0, max(0, most)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def check_allocation(what: str, need: int, available: int, hint: str) -> None:
    """Refuse (`CapacityError`, exit 5) an allocation of `need` bytes when `available` cannot hold it."""
    if need > available:
        raise CapacityError(f"{what} needs {human_bytes(need)}; {human_bytes(available)} of RAM available: {hint}")


def _available() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_loader_memory(what: str, imgsz: tuple[int, int], profile: Profile, *, batch: int | None = None,
                        threads: int | None = None, available: int | None = None) -> int:
    """Refuse (exit 5) a loader whose buffers at `imgsz` (h, w) and `batch` (default: the profile's) cannot
    be allocated in the RAM available; returns the bytes."""
    rec = profile.recommended
    b = int(batch or rec["batch"])
    need = estimate_budget(images=0, imgsz=imgsz, batch=b, threads=int(threads or rec["threads"]),
                           prefetch=int(rec["prefetch"]), workers=0, val_batch=0).sainet_loader_bytes
    check_allocation(f"{what}: batch {b} at {format_imgsz(imgsz)} (loader buffers)", need,
                     _available() if available is None else available, "lower --batch or --imgsz")
    return need


def check_synth(size: tuple[int, int], images: int, available: int | None = None, threads: int | None = None) -> int:
    """Refuse (exit 5) a `sainet synth` that cannot be allocated (or read back); returns the bytes it needs.

    Its thread pool draws `threads` frames at once (`SYNTH_BYTES_PER_PIXEL` each; None: the pool's
    default, min(32, cores + 4)), and the encoded images are kept until the end
    (`SYNTH_JPEG_BYTES_PER_PIXEL` each)."""
    from sainet.core.imaging import MAX_PIXELS

    w, h = size
    if w * h > MAX_PIXELS:
        raise CapacityError(f"synth --size {w}x{h}: {w * h:,} pixels per image, more than sainet reads "
                            f"({MAX_PIXELS:,}, imaging.MAX_PIXELS): use a smaller --size")
    at_once = min(images, threads or min(32, (os.cpu_count() or 1) + 4))  # ThreadPoolExecutor's default
    need = int(at_once * w * h * SYNTH_BYTES_PER_PIXEL + images * w * h * SYNTH_JPEG_BYTES_PER_PIXEL)
    check_allocation(f"synth {images} images of {w}x{h}", need, _available() if available is None else available,
                     "use a smaller --size or fewer --images")
    return need


# ---------------------------------------------------------------------------------------------- the memory plan


def describe_source(text: str) -> tuple[int, tuple[int, int], int] | None:
    """``'117000@1440x808:180KB'`` -> (images, (w, h), jpeg bytes); None when `text` is not a description."""
    m = re.fullmatch(r"(\d+)@([^:]+)(?::(.+))?", text.strip())
    if not m:
        return None
    try:
        w, h = parse_wxh(m.group(2))
        per = parse_bytes(m.group(3)) if m.group(3) else int(w * h * 0.15)  # ~0.15 B/px: a q90 photo
    except ValueError as e:
        raise SettingsError(f"{text!r}: {e} (expected N@WIDTHxHEIGHT[:avgKB], e.g. 117000@1440x808:180KB)",
                            "--source") from None
    n = int(m.group(1))
    if n < 1:
        raise SettingsError(f"{text!r}: the image count must be positive", "--source")
    return n, (w, h), n * per


def _header(sample: Any) -> Any:
    """A sample's `ImageInfo` from its header (`sainet.core.imaging.probe`, as pack reads it): the
    first 64 KB of a file, the whole file only when the header lies further in (a TIFF's IFD)."""
    from sainet.core.errors import CorruptImage
    from sainet.core.imaging import probe

    if sample.data is None and sample.path is not None:
        try:
            with open(sample.path, "rb") as f:
                return probe(f.read(1 << 16), sample.key)
        except (CorruptImage, OSError):
            pass
    return probe(sample.read(), sample.key)


def store_decode_sizes(s: Any, imgsz: tuple[int, int]) -> DecodeSizes:
    """Decode sizes of an open store from its index (original sizes; a raw store decodes nothing)."""
    rec = s.index.records
    if s.mode == "raw" or not len(s):
        return DecodeSizes((), len(s), None)
    hw = list(zip(rec["orig_h"].tolist(), rec["orig_w"].tolist(), strict=True))
    return DecodeSizes.collect(((h, w), h * w * 3) for h, w in hw)  # payload kind unknown: full-size bound


def dataset_decode_sizes(samples: Any, imgsz: tuple[int, int]) -> tuple[Any, list[DecodeSizes]]:
    """Wrap `samples` (streamed, nothing kept) so that every image's header is read on the way;
    the second item holds the `DecodeSizes` once the stream is consumed."""
    out: list[DecodeSizes] = []
    sizes: list[tuple[tuple[int, int], int]] = []
    refused = [0]

    def stream() -> Any:
        for s in samples:
            try:
                info = _header(s)
                w, h = info.size
                sizes.append(((h, w), decode_bytes(info, imgsz)))
            except SainetError:
                refused[0] += 1  # pack leaves it out and says why
            yield s
        out.append(DecodeSizes.collect(sizes, refused[0]))

    return stream(), out


def estimate_source(source: str | None, store: str | os.PathLike[str] | None, imgsz: tuple[int, int],
                    layout: str | None = None) -> tuple[StoreEstimate, DecodeSizes]:
    """Bytes of a store made from `source` (a dataset or an ``N@WxH[:avgKB]`` description) or of `store`,
    and the decode sizes of its images (every header read, as pack does)."""
    from cache_tools.pack import plan_pack
    from cache_tools.store import open_store
    from sainet.core.datasets import open_dataset

    if (source is None) == (store is None):
        raise SettingsError("give one of --source or --store")
    if store is not None:
        with open_store(store) as s:
            jpeg = int(s.index.records["length"].sum()) if s.mode == "jpeg" else 0
            est = estimate_store(len(s), len(s.index.boxes), jpeg, len(s.index.strings), imgsz)
            return est, store_decode_sizes(s, imgsz)
    desc = describe_source(str(source))
    if desc is not None:
        n, (w, h), jpeg = desc
        return estimate_store(n, 3 * n, jpeg, 64 * n, imgsz), DecodeSizes.uniform(n, (h, w))
    ds = open_dataset(source, layout)
    stream, decoded = dataset_decode_sizes(ds.samples(), imgsz)
    est = plan_pack(stream, imgsz)
    return est, decoded[0]


@dataclass(frozen=True)
class Recommendation:
    """The one recommendation `sainet profile`, `sainet plan` and the demo print and use.

    `batch` is per GPU (per rank): the asked or the profile's batch when it fits, else the largest
    that does (0 when not even 1 fits); `fits` says whether the asked batch fits; `problem` why not.
    """

    loader: str
    container: str  # "shards" or "lmdb"
    where: str  # "/dev/shm" or "local disk"
    mode: str
    batch: int
    threads: int
    prefetch: int
    fits: bool = True
    problem: str = ""

    def flags(self) -> str:
        """What to run, as options: ``pack --mode jpeg (shards on /dev/shm), train --loader shm --batch 8``."""
        return f"pack --mode {self.mode} ({self.container} on {self.where}), train --loader {self.loader} --batch {self.batch}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _processes(profile: Profile) -> bool:
    """The profile's loader builds batches in processes (a user profile may name ``lmdb-mp``)."""
    from loaders.backends import BACKENDS

    backend = BACKENDS.get(str(profile.recommended.get("loader")))
    return bool(backend and backend.processes)


def _run_need(profile: Profile, imgsz: tuple[int, int], batch: int, model: str, decode: DecodeSizes | None,
              images: int) -> tuple[int, int]:
    """(host RAM, GPU memory per GPU) of a run at `batch` per rank on `profile`'s machine."""
    rec = profile.recommended
    device = "cuda" if profile.gpus else "cpu"
    b = estimate_budget(images=images, imgsz=imgsz, batch=batch, threads=int(rec["threads"]),
                        prefetch=int(rec["prefetch"]), workers=default_threads(cores=profile.cores, ranks=1),
                        model=model, decode=decode, device=device, amp=device == "cuda", processes=_processes(profile))
    ranks = max(1, profile.gpus)
    host = ranks * b.sainet_loader_bytes + (b.cpu_train_bytes if device == "cpu" else 0)
    return host, (b.vram_bytes if device == "cuda" else 0)


def _batch_problem(profile: Profile, imgsz: tuple[int, int], batch: int, model: str, decode: DecodeSizes | None,
                   images: int, store_in_ram: int) -> str:
    """Why `batch` does not fit `profile`'s memory ("" when it fits)."""
    host, vram = _run_need(profile, imgsz, batch, model, decode, images)
    ram = profile.ram_gb * 1e9 - store_in_ram
    where = f"at {format_imgsz(imgsz)} with {model}"
    if host > ram:
        what = "loader buffers and the model's CPU training memory" if not profile.gpus else "loader buffers"
        extra = f" after the {human_bytes(store_in_ram)} store in /dev/shm" if store_in_ram else ""
        return f"batch {batch} {where}: {what} need {human_bytes(host)} of host RAM; {human_bytes(max(0, ram))} available{extra}"
    if profile.gpus and vram > profile.vram_gb * 1e9:
        return (f"batch {batch} per GPU {where}: about {human_bytes(vram)} of GPU memory (estimate); "
                f"the GPU has {human_bytes(profile.vram_gb * 1e9)}")
    return ""


def recommend_for(source: str | os.PathLike[str] | None, store: str | os.PathLike[str] | None, imgsz: tuple[int, int], *,
                  profile: str = "auto", batch: int | None = None, model: str = "yolov8s.yaml",
                  layout: str | None = None) -> Recommendation:
    """`recommend` for a dataset, description or store on this host as measured (``auto``) or a named
    profile: what `sainet plan` prints as its recommendation and what the demo trains with."""
    from sainet.profiles import choose_profile, detect_host, host_profile

    prof = host_profile(detect_host()) if profile == "auto" else choose_profile(profile)
    est, decode = estimate_source(None if source is None else str(source), store, imgsz, layout)
    return recommend(prof, est, imgsz, batch=batch, model=model, decode=decode)


def recommend(profile: Profile, est: StoreEstimate | None = None, imgsz: tuple[int, int] | None = None, *,
              batch: int | None = None, model: str = "yolov8s.yaml", decode: DecodeSizes | None = None) -> Recommendation:
    """Loader, store, mode and batch for `profile`'s machine (and a store of `est`, at `imgsz`, when given).

    Shards in /dev/shm when the host has one and the store fits it and RAM, else LMDB on local disk;
    the profile's loader when it reads that container, else the zero-copy one that does; the asked
    (or the profile's) batch, checked against host RAM and GPU memory, else the largest that fits.
    """
    rec = profile.recommended
    mode = str(rec["mode"])
    ram, shm = profile.ram_gb * 1e9, profile.shm_gb * 1e9
    in_shm = bool(shm) and (est is None or est.total("jpeg", "shards") <= min(shm, ram))
    if est is not None and mode == "raw" and est.raw_shape and est.total("raw", "shards" if in_shm else "lmdb") > (
            min(shm, ram) if in_shm else ram):
        mode = "jpeg"
    container = "shards" if in_shm else "lmdb"
    loader = _loader_for(profile, container)
    b = int(batch or rec["batch"])
    out = Recommendation(loader, container, "/dev/shm" if in_shm else "local disk", mode, b, int(rec["threads"]),
                         int(rec["prefetch"]))
    if imgsz is None:
        return out
    images = est.images if est is not None else 0
    store_in_ram = est.total(mode, "shards") if (est is not None and in_shm) else 0
    problem = _batch_problem(profile, imgsz, b, model, decode, images, store_in_ram)
    if not problem:
        return out
    fit = largest_fitting(lambda n: not _batch_problem(profile, imgsz, n, model, decode, images, store_in_ram), b - 1)
    return Recommendation(loader, container, out.where, mode, fit, out.threads, out.prefetch, False, problem)


@dataclass
class MemoryPlan:
    """What `sainet plan` prints: one row per memory item with its verdicts, and the advice."""

    profile: Profile
    images: int
    imgsz: tuple[int, int]
    batch: int
    model: str
    rows: list[dict[str, Any]]
    vram_estimate: int
    vram: str
    recommendation: str
    target: dict[str, Any] | None = field(default=None)
    recommended: Recommendation | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    def refusal(self) -> CapacityError:
        """The error `sainet plan` exits with (5) when something does not fit: what, and what would."""
        r = self.recommended
        would = (f"would fit: {r.flags()}" if r and r.batch else
                 f"nothing fits at {format_imgsz(self.imgsz)}, not even batch 1: use a smaller --imgsz or --model")
        return CapacityError("; ".join(self.problems) + f"; {would}")

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "images": self.images, "imgsz": list(self.imgsz), "batch": self.batch,
                "model": self.model, "rows": self.rows, "vram_estimate": self.vram_estimate, "vram": self.vram,
                "recommendation": self.recommendation, "target": self.target,
                "recommended": self.recommended.as_dict() if self.recommended else None, "fits": self.fits,
                "problems": self.problems}


def _verdict(need: float, have: float, where: str) -> str:
    if need <= have:
        return f"fits ({human_bytes(need)} of {human_bytes(have)} {where})"
    return f"does not fit ({human_bytes(need)} > {human_bytes(have)} {where})"


def _rows(est: StoreEstimate, bud: Budget, prof: Profile, imgsz: tuple[int, int]) -> list[dict[str, Any]]:
    ram, shm = prof.ram_gb * 1e9, prof.shm_gb * 1e9
    ranks = max(1, prof.gpus)
    rows = []
    for m in ("jpeg", "raw"):
        need = est.total(m, "shards")
        rows.append({"item": f"store {m}" + (f" at {format_imgsz(imgsz)}" if m == "raw" else ""), "bytes": need,
                     "host RAM (page cache)": _verdict(need, ram, "RAM"),
                     "/dev/shm": _verdict(need, shm, "shm") if shm else "no /dev/shm in this profile"})
    items = [(f"sainet loader buffers x {ranks} rank(s) (decoded batch {human_bytes(bud.decode_bytes)}, "
              f"val loader {human_bytes(bud.val_loader_bytes)})",
              bud.sainet_loader_bytes * ranks),
             (f"Ultralytics workers ({default_threads(cores=prof.cores, ranks=1)}/rank) x {ranks}", bud.ultralytics_loader_bytes * ranks),
             (f"Ultralytics cache=ram x {ranks} rank(s)", bud.ultralytics_ram_cache_bytes * ranks)]
    if not prof.gpus:
        items.append(("model training on the CPU (activations + weights/optimizer)", bud.cpu_train_bytes))
    for item, need in items:
        rows.append({"item": item, "bytes": need, "host RAM (page cache)": _verdict(need, ram, "RAM"), "/dev/shm": "-"})
    return rows


def _loader_for(prof: Profile, container: str) -> str:
    """The profile's loader when it can read `container`, else the zero-copy one that does."""
    from loaders.backends import get_backend, kind_for_container

    loader = prof.recommended["loader"]
    needs = get_backend(loader).container
    return loader if needs in (None, container) and get_backend(loader).reads == "store" else kind_for_container(container)


def _advice(est: StoreEstimate, prof: Profile, r: Recommendation) -> str:
    ram = prof.ram_gb * 1e9
    raw_need = est.total("raw", "shards") if est.raw_shape else None
    train = f"train with --loader {r.loader} --batch {r.batch}"
    if r.container == "shards":
        advice = f"pack --mode {r.mode} into /dev/shm (shards) and {train}"
    elif est.total("jpeg", "lmdb") <= ram:
        advice = f"pack --mode {r.mode} as LMDB on local disk (the page cache holds it) and {train}"
    else:
        advice = f"the jpeg store exceeds RAM: pack LMDB on fast local disk and expect cold reads; {train}"
    if raw_need is not None and r.mode == "jpeg" and raw_need <= (prof.shm_gb * 1e9 or ram) and raw_need <= ram:
        advice += "; raw also fits and skips decoding"
    return advice


def _target(est: StoreEstimate, to: Path, free: int | None) -> dict[str, Any]:
    fs = fs_info(to.parent, free=free)
    target: dict[str, Any] = {"path": str(to), "fstype": fs.fstype, "free": fs.free, "usable": fs.usable, "verdicts": {}}
    for m in ("jpeg", "raw"):
        try:
            check_fits(est, m, "shards" if fs.in_memory else "lmdb", fs)
            target["verdicts"][m] = "fits"
        except CapacityError as e:
            target["verdicts"][m] = str(e)
    return target


def plan_memory(est: StoreEstimate, profile: Profile, imgsz: tuple[int, int], *, batch: int | None = None,
                model: str = "yolov8s.yaml", decode: DecodeSizes | None = None, to: Path | None = None,
                assume_free: int | None = None) -> MemoryPlan:
    """The memory budget of a store and a training run against `profile`, what fits and what would."""
    rec = profile.recommended
    r = recommend(profile, est, imgsz, batch=batch, model=model, decode=decode)
    b = batch or int(rec["batch"])
    bud = estimate_budget(images=est.images, imgsz=imgsz, batch=b, threads=int(rec["threads"]),
                          prefetch=int(rec["prefetch"]), workers=default_threads(cores=profile.cores, ranks=1),
                          model=model, decode=decode, device="cuda" if profile.gpus else "cpu", amp=bool(profile.gpus),
                          processes=_processes(profile))
    vram = profile.vram_gb * 1e9
    vram_line = _verdict(bud.vram_bytes, vram, "VRAM") if vram else "no GPU in this profile"
    problems = [r.problem] if r.problem else []
    target = _target(est, to, assume_free) if to is not None else None
    if target is not None and all(v != "fits" for v in target["verdicts"].values()):
        problems.append(f"the store does not fit {to}: {target['verdicts']['jpeg']}")
    return MemoryPlan(profile, est.images, imgsz, b, model, _rows(est, bud, profile, imgsz), bud.vram_bytes, vram_line,
                      _advice(est, profile, r), target, r, problems)
