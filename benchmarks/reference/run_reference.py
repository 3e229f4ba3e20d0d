"""Run the public COBRA reference (github:mhmoslemi/COBRA, ``train_dm.py``) unmodified and resumably.

The reference's ``main(args)`` is one monolithic loop (2600 distillation iterations, then
``num_eval`` evaluations of 1500 epochs each: about 45-50 minutes on an H200). This runner lets
it advance across several processes of limited length (machines that start empty, files carried
through a state folder), without editing the reference: like ``time_reference.py`` (whose
wrappers, scipy shim and memoised ``get_dataset`` it imports), it runs ``main(args)`` in-process
with the reference's own argparse and hooks into the functions the loop calls.

    python benchmarks/reference/run_reference.py --ref-dir .ref/COBRA --data-root DIR \\
        --state DIR --budget-s 480 -- --dataset Colored_FashionMNIST_background --ipc 50 --mode cobra

Exit status 0: finished, ``STATE/result.json`` written. Exit status 75 (``EX_TEMPFAIL``): the
time budget ran out, a checkpoint is in ``STATE/checkpoint.pt``; run the same command again.

How it works (the loop is ``for it in range(Iteration + 1)``: at ``it == Iteration`` it
evaluates ``num_eval`` times *before* that iteration's distillation step, and saves
``res_*.pt`` *after* it; so an uninterrupted run evaluates the set after ``Iteration`` steps and
saves it after ``Iteration + 1``):

* ``train_dm.get_network`` is called once at the start of every distillation iteration and
  once before every evaluation. The two are told apart by counting: in a process run with
  ``--Iteration L``, the calls made after ``L`` distillation calls and before the
  ``num_eval * len(eval pool)`` evaluations are done are evaluation calls.
* ``train_dm.torch`` is replaced by a proxy of ``torch`` whose ``optim.SGD`` records the first
  optimizer built in ``main``: the one over ``image_syn`` (``optimizer_img``). Its parameter is
  the synthetic set itself, its state the momentum buffer.
* Checkpoint: at the start of distillation iteration ``it`` (before its ``get_network``), or
  before evaluation ``j`` at ``it == L``, once the process has run longer than ``--budget-s``
  and has done at least one step or evaluation, the runner writes ``image_syn``, the
  optimizer's state, the number of steps done, the evaluations already done (their metrics),
  the python / numpy / torch / CUDA RNG states, the total ``Iteration`` and the reference flags
  to ``STATE/checkpoint.pt`` (temporary file, then rename) and exits 75. The step at
  ``it == L`` (after the evaluations) is never a checkpoint point: it is the one the reference
  takes before saving ``res_*.pt``.
* Resume: ``main`` runs with ``--Iteration`` = total minus steps done. After the reference's
  own initialisation (dataset, random real init, optimizer), the first ``get_network`` call
  restores ``image_syn`` and the optimizer state, and the first call that is not an
  already-done evaluation restores the RNG states (before the call, as when they were saved).
  Evaluations already done are not re-run: ``evaluate_synset`` returns their recorded metrics
  (the reference uses only indices 2, 3, 4 of its output). So the continued loop evaluates
  after ``total`` steps and saves ``res_*.pt`` after ``total + 1``, as an uninterrupted run.
* ``--deterministic-clock``: the reference seeds torch from the wall clock (``utils.get_network``
  calls ``torch.random.manual_seed(int(time.time() * 1000) % 100000)`` and every DSA call in
  ``train_dm`` draws its seed the same way), so two runs of it never match. With this flag the
  ``time`` module seen by ``train_dm`` and ``utils`` is a proxy whose ``time()`` counts calls
  (``(n + 0.5) / 1000``, so the seed is ``n mod 100000``); the counter is checkpointed. It
  exists to test that a resumed run continues the interrupted one bit for bit; the real
  reference run leaves it off (its resume is then statistically, not bitwise, the same run).

``--evaluate-checkpoint``: for a run that cannot be finished (device time ran out), evaluate
the checkpoint's synthetic set as it stands with the reference's own ``evaluate_synset``. The
reference's ``main`` runs with ``--Iteration 0``: it restores the set, evaluates it ``num_eval``
times (``--num_eval`` may differ from the checkpoint's, e.g. fewer on a CPU) and is stopped
before its final distillation step. It writes ``STATE/evaluation_at_<steps done>.json`` (run
again, the new evaluations join the file's earlier ones) and leaves ``checkpoint.pt`` as it was
(never a checkpoint, never ``result.json``), so the run can still be continued later.

Limits: ``--num_exp`` must be 1 (the loop over experiments re-initialises the set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: fdd's atomic writes

from fdd.files import atomic_write, atomic_write_bytes

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: budget ran out, checkpoint written, run the same command again
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
# where the data and the reference's outputs live may differ between machines: not compared
PATH_FLAGS = frozenset({"data_path", "save_path"})
ERR_FLAGS = (
    "the checkpoint in {state} was made with other reference flags; differing: {diff}. "
    "Use another --state folder or the same flags."
)
ERR_NO_CHECKPOINT = "--evaluate-checkpoint needs {path}: there is no checkpoint to evaluate in {state}"
ERR_NO_EVALUATIONS = "--evaluate-checkpoint needs --num_eval of at least 1; got {value}"
ERR_EVALUATION_FILE = "{path} cannot be added to: {why}. Move it away to start a new evaluation file of this checkpoint"
# flags that may differ from the checkpoint's when only evaluating it
EVALUATION_FLAGS = frozenset({"num_eval"})
ERR_NUM_EXP = (
    "run_reference supports --num_exp 1 only (the reference re-initialises the set per experiment); got {value}"
)


class EvaluationsDone(BaseException):
    """Raised at the reference's first distillation call after the evaluations of
    ``--evaluate-checkpoint``, so the set is not stepped further."""


class BudgetExhausted(BaseException):
    """Raised inside the reference's loop to unwind it after a checkpoint (not an Exception, so
    nothing in the reference can swallow it)."""


def parse_cli(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        own, ref = argv[:cut], argv[cut + 1 :]
    else:
        own, ref = argv, []
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ref-dir", required=True, help="checkout of github:mhmoslemi/COBRA (read only)")
    p.add_argument("--data-root", required=True, help="passed to the reference as --data_path")
    p.add_argument("--state", required=True, help="folder for checkpoint.pt, result.json and res_*.pt")
    p.add_argument("--budget-s", type=float, default=480.0, help="checkpoint and exit 75 once this many seconds passed")
    p.add_argument(
        "--max-units",
        type=int,
        default=None,
        help="also checkpoint once this process has done this many steps + evaluations (tests only)",
    )
    p.add_argument(
        "--evaluate-checkpoint",
        action="store_true",
        help="evaluate the checkpoint's set as it stands (num_eval times, with the reference's own evaluation) into "
        "STATE/evaluation_at_<steps>.json; the checkpoint is left as it was",
    )
    p.add_argument("--deterministic-clock", action="store_true", help="count time.time() calls (tests only)")
    p.add_argument(
        "--cpu-cuda-noop",
        action="store_true",
        help="without CUDA, make Tensor.cuda() return the tensor (the reference's fairness metric calls .cuda(); tests only)",
    )
    return p.parse_args(own), ref


def atomic_write_json(path: str, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def git_commit(ref_dir: str) -> str:
    try:
        out = subprocess.run(["git", "-C", ref_dir, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class CountingClock:
    """``time`` module stand-in whose ``time()`` returns ``(n + 0.5) / 1000`` at its n-th call."""

    def __init__(self) -> None:
        self.calls = 0

    def module(self) -> types.ModuleType:
        real = time
        clock = self

        class _Time(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def time(self) -> float:
                t = (clock.calls + 0.5) / 1000.0
                clock.calls += 1
                return t

        return _Time("time")


class Runner:
    def __init__(self, cli: argparse.Namespace, ref_flags: list[str]) -> None:
        self.t_start = time.perf_counter()
        self.cli = cli
        self.state_dir = cli.state
        os.makedirs(self.state_dir, exist_ok=True)
        # time_reference reads the reference's location from COBRA_DIR when imported
        os.environ["COBRA_DIR"] = os.path.abspath(cli.ref_dir)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import time_reference as tr  # configured through COBRA_DIR above

        self.tr = tr
        self.torch = tr.torch
        self.np = tr.np
        self.train_dm = tr.train_dm
        self.utils = tr.utils
        self.flags = ["--data_path", cli.data_root, *ref_flags]
        self.args = self._parse(self.flags)
        if self.args.num_exp != 1:
            raise SystemExit(ERR_NUM_EXP.format(value=self.args.num_exp))
        self.total = int(self.args.Iteration)
        pool = self.utils.get_eval_pool(self.args.eval_mode, self.args.model, self.args.model)
        self.n_evals = int(self.args.num_eval) * len(pool)
        self.evaluate_only = bool(cli.evaluate_checkpoint)
        self.ckpt: dict | None = self._load_checkpoint()
        if self.evaluate_only and self.ckpt is None:
            path = os.path.join(self.state_dir, CHECKPOINT)
            raise SystemExit(ERR_NO_CHECKPOINT.format(path=path, state=self.state_dir))
        if self.evaluate_only and self.n_evals < 1:
            raise SystemExit(ERR_NO_EVALUATIONS.format(value=self.args.num_eval))
        self.done = int(self.ckpt["done"]) if self.ckpt else 0  # steps done before this process
        # a checkpoint evaluated again: the new evaluations join those already in its file (read now, not after hours)
        self.earlier_evals: list[dict] = self._earlier_evaluations() if self.evaluate_only else []
        # --Iteration of this process: 0 when only evaluating (the loop evaluates at it == 0)
        self.local_iterations = 0 if self.evaluate_only else self.total - self.done
        self.evals: list[dict] = list(self.ckpt["evals"]) if self.ckpt and not self.evaluate_only else []
        self.segments: list[dict] = list(self.ckpt["segments"]) if self.ckpt else []
        self.clock: CountingClock | None = None
        if cli.cpu_cuda_noop and not self.torch.cuda.is_available():
            self.torch.Tensor.cuda = lambda t, *a, **k: t
        if cli.deterministic_clock:
            self.clock = CountingClock()
            self.train_dm.time = self.clock.module()
            self.utils.time = self.clock.module()
        # per-process counters
        self.distill_calls = 0
        self.eval_calls = 0
        self.evals_run = 0  # evaluations run (not replayed) in this process
        self.image_restored = False
        self.rng_restored = self.ckpt is None
        self.optimizer: Any = None
        self.capture_armed = False
        self._install_hooks()

    # ------------------------------------------------------------------ setup
    def _parse(self, flags: list[str]) -> argparse.Namespace:
        old = sys.argv
        sys.argv = ["train_dm.py", *flags]
        try:
            return self.train_dm.parse_args()
        finally:
            sys.argv = old

    def _load_checkpoint(self) -> dict | None:
        path = os.path.join(self.state_dir, CHECKPOINT)
        if not os.path.exists(path):
            return None
        ckpt = self.torch.load(path, map_location="cpu", weights_only=False)
        theirs, ours = ckpt["args"], vars(self.args)
        keys = (set(theirs) | set(ours)) - PATH_FLAGS - (EVALUATION_FLAGS if self.evaluate_only else frozenset())
        diff = sorted(k for k in keys if theirs.get(k) != ours.get(k))
        if diff:
            shown = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {ours.get(k)!r}" for k in diff)
            raise SystemExit(ERR_FLAGS.format(state=self.state_dir, diff=shown))
        return ckpt

    def _evaluation_path(self) -> str:
        return os.path.join(self.state_dir, f"evaluation_at_{self.done}.json")

    def _earlier_evaluations(self) -> list[dict]:
        path = self._evaluation_path()
        if not os.path.exists(path):
            return []
        try:
            with open(path, encoding="utf-8") as handle:
                before = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SystemExit(ERR_EVALUATION_FILE.format(path=path, why=f"not readable JSON ({error})")) from None
        evaluations = before.get("evaluations") if isinstance(before, dict) else None
        if not isinstance(evaluations, list) or before.get("iterations_done") != self.done:
            why = f"it is not an evaluation of the set after {self.done} iterations"
            raise SystemExit(ERR_EVALUATION_FILE.format(path=path, why=why))
        for evaluation in evaluations:  # files written before evaluations named their device: the file's
            evaluation.setdefault("device", before.get("device"))
        return evaluations

    def _install_hooks(self) -> None:
        torch, runner = self.torch, self

        class CapturingSGD(torch.optim.SGD):  # type: ignore[misc,name-defined]
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, **k)
                if runner.capture_armed:
                    runner.optimizer = self
                    runner.capture_armed = False

        optim_proxy = types.ModuleType("torch.optim")
        optim_proxy.__getattr__ = lambda name: getattr(torch.optim, name)  # type: ignore[method-assign]
        optim_proxy.SGD = CapturingSGD  # type: ignore[attr-defined]

        class _Torch(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                return getattr(torch, name)

        proxy = _Torch("torch")
        proxy.optim = optim_proxy  # type: ignore[attr-defined]
        self.train_dm.torch = proxy
        self._inner_get_network = self.train_dm.get_network  # time_reference's timed wrapper
        self._inner_evaluate = self.train_dm.evaluate_synset
        self.train_dm.get_network = self.get_network
        self.train_dm.evaluate_synset = self.evaluate_synset

    # ------------------------------------------------------------------ state
    def _rng_state(self) -> dict:
        torch = self.torch
        state = {
            "python": random.getstate(),
            "numpy": self.np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "clock": self.clock.calls if self.clock else None,
        }
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch = self.torch
        random.setstate(state["python"])
        self.np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if self.clock is not None:
            if state["clock"] is None:
                raise SystemExit("the checkpoint was made without --deterministic-clock; resume without it")
            self.clock.calls = int(state["clock"])

    def _image_syn(self) -> Any:
        if self.optimizer is None:
            raise RuntimeError("the reference's image optimizer (torch.optim.SGD over image_syn) was not captured")
        return self.optimizer.param_groups[0]["params"][0]

    @property
    def work(self) -> int:
        """Steps and evaluations completed in this process (at a get_network call, every
        earlier distillation call's step has completed)."""
        return self.distill_calls + self.evals_run

    def _segment(self, end: int, how: str) -> dict:
        return {
            "start_done": self.done,
            "end_done": end,
            "evals_run": self.evals_run,
            "wall_s": round(time.perf_counter() - self.t_start, 3),
            "device": device_name(self.torch),
            "exit": how,
        }

    def checkpoint(self, done: int) -> None:
        segments = [*self.segments, self._segment(done, "checkpoint")]
        payload = {
            "done": done,
            "total": self.total,
            "image_syn": self._image_syn().detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self._rng_state(),
            "evals": self.evals,
            "args": vars(self.args),
            "flags": self.flags,
            "segments": segments,
        }
        path = os.path.join(self.state_dir, CHECKPOINT)
        atomic_write(path, lambda handle: self.torch.save(payload, handle))
        atomic_write_json(
            os.path.join(self.state_dir, "progress.json"),
            {k: payload[k] for k in ("done", "total", "segments")} | {"evals_done": len(self.evals)},
        )
        raise BudgetExhausted(done)

    def _restore_image(self) -> None:
        assert self.ckpt is not None
        image_syn = self._image_syn()
        saved = self.ckpt["image_syn"]
        if tuple(saved.shape) != tuple(image_syn.shape):
            raise SystemExit(
                f"checkpoint image_syn has shape {tuple(saved.shape)}, the reference built {tuple(image_syn.shape)}"
            )
        image_syn.data.copy_(saved.to(image_syn.device))
        self.optimizer.load_state_dict(self.ckpt["optimizer"])  # moves the momentum buffer to the param's device
        self.image_restored = True

    # ------------------------------------------------------------------ hooks
    def _over_budget(self) -> bool:
        if self.work < 1 or self.evaluate_only:  # an evaluation of a checkpoint never checkpoints
            return False
        if self.cli.max_units is not None and self.work >= self.cli.max_units:
            return True
        return time.perf_counter() - self.t_start > self.cli.budget_s

    def get_network(self, *a: Any, **k: Any) -> Any:
        if self.optimizer is None:
            raise RuntimeError("get_network called before the image optimizer was built: unexpected reference code")
        is_eval = self.distill_calls == self.local_iterations and self.eval_calls < self.n_evals
        if self.ckpt is not None and not self.image_restored:
            self._restore_image()
        if is_eval:
            j = self.eval_calls
            skipped = j < len(self.evals)
            if not skipped:
                if not self.rng_restored:
                    self._set_rng_state(self.ckpt["rng"])  # type: ignore[index]
                    self.rng_restored = True
                elif self._over_budget():
                    self.checkpoint(self.total)
            self.eval_calls += 1
        else:
            if self.evaluate_only:
                raise EvaluationsDone()
            d = self.distill_calls
            if not self.rng_restored:
                self._set_rng_state(self.ckpt["rng"])  # type: ignore[index]
                self.rng_restored = True
            elif d < self.local_iterations and self._over_budget():
                self.checkpoint(self.done + d)
            g = self.done + d
            if g % 250 == 0 or d == 0:
                elapsed = time.perf_counter() - self.t_start
                print(f"[run_reference] iteration {g}/{self.total} (this process: {d}), {elapsed:.0f} s", flush=True)
            self.distill_calls += 1
        return self._inner_get_network(*a, **k)

    def evaluate_synset(self, it_eval: int, *a: Any, **k: Any) -> Any:
        j = self.eval_calls - 1
        if j < len(self.evals):  # done in an earlier process: its recorded metrics
            e = self.evals[j]
            print(
                f"[run_reference] evaluation {j} done earlier: acc {e['acc']} max_EO {e['max_eo']} mean_EO {e['mean_eo']}",
                flush=True,
            )
            return None, None, e["acc"], e["max_eo"], e["mean_eo"], None, None
        t0 = time.perf_counter()
        out = self._inner_evaluate(it_eval, *a, **k)
        self.evals.append(
            {
                "acc": float(out[2]),
                "max_eo": float(out[3]),
                "mean_eo": float(out[4]),
                "max_sufficiency": float(out[5]),
                "mean_sufficiency": float(out[6]),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        self.evals_run += 1
        return out

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        if os.path.exists(os.path.join(self.state_dir, RESULT)) and not self.evaluate_only:
            print(f"[run_reference] {self.state_dir}/{RESULT} exists: finished already", flush=True)
            return 0
        flags = [*self.flags, "--Iteration", str(self.local_iterations)]
        if self.evaluate_only:
            print(
                f"[run_reference] evaluating the checkpoint's set after {self.done}/{self.total} iterations, "
                f"{self.n_evals} evaluation(s); device {device_name(self.torch)}",
                flush=True,
            )
        else:
            print(
                f"[run_reference] {'resuming at' if self.ckpt else 'starting'} {self.done}/{self.total} iterations, "
                f"{len(self.evals)}/{self.n_evals} evaluations done; budget {self.cli.budget_s:.0f} s; "
                f"device {device_name(self.torch)}",
                flush=True,
            )
        self.capture_armed = True
        try:
            self.tr.run_reference(flags)
        except EvaluationsDone:
            self.write_checkpoint_evaluation()
            return 0
        except BudgetExhausted as stop:
            print(
                f"[run_reference] budget spent after {time.perf_counter() - self.t_start:.0f} s: checkpoint at "
                f"{stop.args[0]}/{self.total} iterations, {len(self.evals)}/{self.n_evals} evaluations in "
                f"{self.state_dir}/{CHECKPOINT}; run the same command again (exit {EXIT_RESUMABLE})",
                flush=True,
            )
            return EXIT_RESUMABLE
        self.finish()
        return 0

    def _summary(self) -> dict:
        np = self.np
        accs = [e["acc"] for e in self.evals]
        return {
            "reference": "github:mhmoslemi/COBRA train_dm.py",
            "reference_commit": git_commit(self.cli.ref_dir),
            "flags": self.flags,
            "num_evaluations": len(self.evals),
            "evaluations": self.evals,
            "acc_mean": float(np.mean(accs)) if accs else None,
            "acc_std": float(np.std(accs)) if accs else None,
            "deo_m_mean": float(np.mean([e["max_eo"] for e in self.evals])) if accs else None,
            "deo_a_mean": float(np.mean([e["mean_eo"] for e in self.evals])) if accs else None,
            "units": "percent, as the reference rounds them (acc_std: population std, np.std)",
            "device": device_name(self.torch),
            "torch": self.torch.__version__,
            "python": platform.python_version(),
            "deterministic_clock": bool(self.cli.deterministic_clock),
        }

    def write_checkpoint_evaluation(self) -> None:
        """``--evaluate-checkpoint``: the evaluations of the set after ``done`` of ``total`` steps,
        this process's after those of earlier ones (each with its device)."""
        path = self._evaluation_path()
        for evaluation in self.evals:
            evaluation["device"] = device_name(self.torch)
        self.evals = [*self.earlier_evals, *self.evals]
        result = self._summary() | {
            "iterations_done": self.done,
            "iterations_total": self.total,
            "distillation_segments": self.segments,
        }
        atomic_write_json(path, result)
        print(
            f"[run_reference] the set after {self.done}/{self.total} iterations, {len(self.evals)} evaluation(s): acc "
            f"{result['acc_mean']} +- {result['acc_std']}, DEO_M {result['deo_m_mean']}, DEO_A {result['deo_a_mean']} "
            f"-> {path} (checkpoint left as it was)",
            flush=True,
        )

    def finish(self) -> None:
        a = self.args
        name = f"res_DM_{a.dataset}_{a.model}_{a.ipc}ipc_{a.mode}.pt"
        res = os.path.join(a.save_path, name)
        copied = None
        if os.path.exists(res):
            copied = os.path.join(self.state_dir, name)
            with open(res, "rb") as source:
                atomic_write(copied, lambda handle: shutil.copyfileobj(source, handle))
        segments = [*self.segments, self._segment(self.total, "finished")]
        result = self._summary() | {
            "iterations": self.total,
            "segments": segments,
            "wall_s_total": round(sum(s["wall_s"] for s in segments), 3),
            "res_file": os.path.basename(copied) if copied else None,
        }
        atomic_write_json(os.path.join(self.state_dir, RESULT), result)
        print(
            f"[run_reference] finished {self.total} iterations in {len(segments)} segment(s): acc {result['acc_mean']} "
            f"+- {result['acc_std']}, DEO_M {result['deo_m_mean']}, DEO_A {result['deo_a_mean']} -> "
            f"{self.state_dir}/{RESULT}",
            flush=True,
        )


def device_name(torch: Any) -> str:
    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return f"cpu ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    cli, ref_flags = parse_cli(sys.argv[1:] if argv is None else argv)
    return Runner(cli, ref_flags).run()


if __name__ == "__main__":
    sys.exit(main())
