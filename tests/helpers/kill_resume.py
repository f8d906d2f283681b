"""Kill trials: a training run is killed with SIGKILL at some instant (a random time, or while it
writes a checkpoint, prunes an old one or writes the final model), then resumed with
--resume-from-checkpoint latest into the same folder, and must lose nothing: every checkpoint-STEP/
left behind is complete and loads, the resume starts from the newest complete one, runs to the end,
leaves no temporary files, and its final model equals an uninterrupted run's bit for bit.

Shared by bench/kill_trials.py (many trials) and tests/train/test_kill_resume.py (a few)."""

import contextlib
import filecmp
import json
import os
import re
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from train_runs import random_images

REPO = Path(__file__).resolve().parents[2]
BASE_MODEL = REPO / "world" / "base"

CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # list_checkpoints' pattern (src/train/checkpoint.cpp)
# A checkpoint being written: io::publish_folder's DIR.tmp-PID (src/io/atomic_write.cpp). The final
# model is written to .final-model.tmp-PID (train::save_final_model).
STAGING = re.compile(r"checkpoint-\d+\.tmp-\d+")
LOCK = ".sdtune.lock"  # one run per OUT (src/train/output_lock.cpp)
EVENTS = re.compile(r"logs/events\.out\.tfevents\..*")  # TensorBoard's, named by time and process
PIPELINE = {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}  # the final model's folders
POLL = 0.001  # seconds between looks at OUT while waiting for a target


@dataclass
class Run:
    """One training run's command line: a full fine-tune of the shipped tiny base model with EMA and
    the text encoder (the most state per checkpoint), a checkpoint every `every` steps of which the
    last `keep` stay (so that pruning runs too)."""

    sdtune: Path
    data: Path
    steps: int = 16
    every: int = 2
    keep: int = 3
    model: Path = BASE_MODEL

    def args(self, out, resume=False):
        args = ["train", "--model", self.model, "--data", self.data, "--out", out, "--resolution", 32,
                "--center-crop", "--random-flip", "--batch-size", 2, "--use-ema", "--train-text-encoder",
                "--learning-rate", 1e-3, "--lr-scheduler", "cosine", "--lr-warmup-steps", 2,
                "--max-steps", self.steps, "--checkpointing-steps", self.every,
                "--checkpoints-total-limit", self.keep, "--seed", 0]
        # Not --quiet: the resumed run says which checkpoint it took.
        return [str(self.sdtune), *map(str, args), *(["--resume-from-checkpoint", "latest"] if resume else [])]

    def start(self, out, log, resume=False):
        """The run as a process writing to `log`. One thread: on a busy machine OpenMP's waiting
        threads make a step tens of times slower, and every run of a comparison must use the same."""
        with open(log, "w") as f:
            return subprocess.Popen(self.args(out, resume), stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})

    def checkpoint_steps(self):
        return list(range(self.every, self.steps, self.every)) + [self.steps]

    def pruning_steps(self):
        """The checkpoints whose saving removes an older one."""
        return self.checkpoint_steps()[self.keep:]


def make_data(folder, n=4, seed=0):
    """n random 40×40 images with captions (centre-cropped to 32 by the run)."""
    random_images(folder, n, seed, size=40)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": f"a random picture number {i}"}) + "\n"
                for i in range(n)))
    return folder


@dataclass
class Reference:
    """The uninterrupted run: its folder and how long it and its writes took."""

    out: Path
    seconds: float
    checkpoint_seconds: float  # the longest a checkpoint's temporary folder existed
    final_seconds: float  # from the final model's first temporary until its last is gone


def _names(out):
    """The names in `out` (none before sdtune creates it)."""
    try:
        return set(os.listdir(out))
    except FileNotFoundError:
        return set()


def reference_run(run, out, log):
    """Runs `run` uninterrupted into `out`, timing its checkpoint and final-model writes."""
    start = time.monotonic()
    proc = run.start(out, log)
    appeared, gone = {}, {}  # name in OUT -> when first seen, when first missed
    while proc.poll() is None:
        now = time.monotonic()
        names = _names(out)
        for name in names:
            appeared.setdefault(name, now)
        for name in appeared.keys() - names:
            gone.setdefault(name, now)
        time.sleep(POLL)
    end = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"the reference run failed ({proc.returncode}); see {log}")
    staging = [gone.get(n, end) - t for n, t in appeared.items() if STAGING.fullmatch(n)]
    final = [n for n in appeared if n.startswith(".final-model")]
    final_start = min((appeared[n] for n in final), default=end)
    final_end = max((gone.get(n, end) for n in final), default=end)
    return Reference(out, end - start, max(staging, default=0.0), final_end - final_start)


# ---- What a folder holds -----------------------------------------------------------------------


def files_under(folder):
    """Relative paths of the files under `folder`, sorted ([] if it is gone; os.walk, unlike
    rglob, does not fail when sdtune removes a folder during the walk)."""
    return sorted(os.path.relpath(os.path.join(root, f), folder)
                  for root, _, files in os.walk(folder) for f in files)


def leftovers(out, reference):
    """What `out` holds that the reference run's folder does not, whatever its name (temporaries,
    half-removed folders), the topmost entry of each extra tree only. Checkpoint folders and
    TensorBoard files aside: those are judged on their own."""
    def entries(folder):
        return {os.path.relpath(os.path.join(root, n), folder) for root, dirs, files in os.walk(folder)
                for n in dirs + files}

    theirs = entries(reference)
    return sorted(e for e in entries(out) - theirs
                  if (os.path.dirname(e) in theirs or not os.path.dirname(e))
                  and not CHECKPOINT.fullmatch(e.split("/")[0]) and not EVENTS.fullmatch(e))


def raw_tensors(path):
    """{key: (dtype, shape, raw bytes)} of a safetensors file, read straight from its layout
    (8-byte header length, JSON header, data) so that equality is byte for byte."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def loads(path):
    """None if the file parses (safetensors: every tensor read through the safetensors package;
    JSON), else why not."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, "pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 -- any failure to parse is the finding
        return f"{type(e).__name__}: {e}"
    return None


def compare_files(ours, theirs, names):
    """Differences between the files `names` under two folders: safetensors by raw bytes per key
    (plus a note when only the whole files differ), anything else byte for byte. Returns
    (problems, safetensors files whose whole files differ)."""
    problems, whole = [], []
    for name in names:
        a, b = Path(ours) / name, Path(theirs) / name
        if name.endswith(".safetensors"):
            ta, tb = raw_tensors(a), raw_tensors(b)
            if ta.keys() != tb.keys():
                problems.append(f"{name}: keys differ")
                continue
            differing = [k for k in ta if ta[k] != tb[k]]
            if differing:
                problems.append(f"{name}: {len(differing)} tensors differ (e.g. {differing[0]})")
            if not filecmp.cmp(a, b, shallow=False):
                whole.append(name)
        elif not filecmp.cmp(a, b, shallow=False):
            problems.append(f"{name} differs")
    return problems, whole


def check_checkpoint(folder, layout, reference=None):
    """Problems of one checkpoint-STEP folder: files missing or extra against `layout` (any complete
    checkpoint's file list), a file that does not parse, a step that is not STEP, and, when the
    reference run kept the same checkpoint, any difference from it (train_config.toml names OUT, so
    it is left out)."""
    step = int(CHECKPOINT.fullmatch(folder.name).group(1))
    files = files_under(folder)
    problems = [f"{what} {', '.join(sorted(names))}" for what, names in
                (("missing", set(layout) - set(files)), ("extra", set(files) - set(layout))) if names]
    problems += [f"{n}: {why}" for n in files if (why := loads(folder / n))]
    state = folder / "training_state" / "trainer_state.json"
    if state.is_file() and not loads(state) and json.loads(state.read_text()).get("step") != step:
        problems.append(f"trainer_state.json step is not {step}")
    if reference is not None and reference.is_dir() and not problems:
        problems += compare_files(folder, reference, [n for n in files if n != "train_config.toml"])[0]
    return [f"{folder.name}: {p}" for p in problems]


def checkpoints(out):
    """{step: folder} of the folders under `out` named checkpoint-STEP."""
    found = {}
    for name in _names(out):
        if (m := CHECKPOINT.fullmatch(name)) and (Path(out) / name).is_dir():
            found[int(m.group(1))] = Path(out) / name
    return found


def listed_by_sdtune(folder):
    """Whether sdtune's list_checkpoints takes `folder` for a checkpoint (it checks only that
    training_state/trainer_state.json exists)."""
    return (folder / "training_state" / "trainer_state.json").is_file()


def final_files(out):
    """The final pipeline's files in a finished run's OUT: all but checkpoints, logs and the run's
    lock file (which holds the pid of the last run)."""
    return [n for n in files_under(out)
            if not (n.startswith("logs/") or CHECKPOINT.match(n) or n == LOCK)]


# ---- One trial ---------------------------------------------------------------------------------


@dataclass
class Trial:
    """What one kill and resume did."""

    index: int
    target: str
    killed: bool = False
    kill_seconds: float = 0.0  # since the run started
    # What the kill interrupted, as OUT shows it (startup, training, checkpoint, prune, final model,
    # done), and the files concerned.
    phase: str = ""
    writing: str = ""
    newest: int = 0  # the newest complete checkpoint after the kill (0: none)
    resumed: bool = False
    bitwise: bool = False
    whole_files_differ: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return self.resumed and self.bitwise and not self.problems

    def line(self):
        kill = f"killed at {self.kill_seconds:6.2f}s" if self.killed else f"ended at {self.kill_seconds:6.2f}s "
        newest = f"checkpoint-{self.newest}" if self.newest else "none"
        text = (f"trial {self.index:3d}  {self.target:10s} {kill}  during: {self.phase:11s} "
                f"{self.writing:38s} newest: {newest:14s} resume {'ok' if self.resumed else 'FAILED'}  "
                f"bitwise {'ok' if self.bitwise else 'FAILED'}")
        if self.whole_files_differ:
            text += f"  (whole files differ: {', '.join(self.whole_files_differ)})"
        return text + "".join(f"\n    problem: {p}" for p in self.problems)


def _wait_until(proc, condition, deadline):
    """Polls until condition() holds (True) or the process ends or the deadline passes (False)."""
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL)
    return False


def _kill_at_target(proc, run, ref, out, layout, target, rng, start):
    """Waits for `target` and kills the run there; returns whether it was killed.
    uniform: a time drawn uniformly over the reference run's duration. checkpoint: a random moment
    of a random checkpoint's write (once its temporary folder appears). prune: as soon as the
    checkpoint due to be removed after a random checkpoint's save starts losing files. final: a
    random moment of the final model's write."""
    deadline = start + 10 * ref.seconds + 60  # a run much slower than the reference is a hang
    if target == "uniform":
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, start + rng.uniform(0, ref.seconds) - time.monotonic()))
        reached = True
    elif target == "checkpoint":
        staging = re.compile(rf"checkpoint-{rng.choice(run.checkpoint_steps())}\.tmp-\d+")
        reached = _wait_until(proc, lambda: any(staging.fullmatch(n) for n in _names(out)), deadline)
        if reached:
            time.sleep(rng.uniform(0, ref.checkpoint_seconds))
    elif target == "prune":
        step = rng.choice(run.pruning_steps())
        victim = out / f"checkpoint-{step - run.keep * run.every}"
        # Once the new checkpoint is published, only the prune (after the folder's fsync) is left.
        reached = _wait_until(proc, lambda: (out / f"checkpoint-{step}").is_dir(), deadline) and \
            _wait_until(proc, lambda: len(files_under(victim)) < len(layout), deadline)
    elif target == "final":
        reached = _wait_until(proc, lambda: any(n.startswith(".final-model") for n in _names(out)),
                              deadline)
        if reached:
            time.sleep(rng.uniform(0, ref.final_seconds))
    else:
        raise ValueError(target)
    if not reached or proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return proc.wait() == -signal.SIGKILL


def _interrupted(out, run, layout):
    """(phase, detail): what the kill interrupted, as the folder shows it."""
    names = _names(out)
    staging = sorted(n for n in names if STAGING.fullmatch(n))
    if staging:
        return "checkpoint", f"{staging[0].split('.')[0]} (temporary folder)"
    partial = sorted(s for s, f in checkpoints(out).items() if files_under(f) != layout)
    if partial:
        return "prune", f"checkpoint-{partial[0]} partly removed"
    if len(checkpoints(out)) > run.keep:
        return "prune", f"checkpoint-{max(checkpoints(out))} published, prune pending"
    if "model_index.json" in names:
        return "done", "final model complete"
    if any(n.startswith(".final-model") for n in names) or PIPELINE & names:
        return "final model", ", ".join(sorted(n for n in names if n.startswith(".") or n in PIPELINE))
    return ("training", "") if "logs" in names else ("startup", "")


def _check_after_kill(trial, out, ref, layout):
    """(a) every checkpoint-STEP folder is complete, loads and equals the reference's; (b) no
    incomplete one would be taken for a checkpoint by sdtune. Sets trial.newest."""
    complete = []
    for step, folder in sorted(checkpoints(out).items()):
        problems = check_checkpoint(folder, layout, ref.out / folder.name)
        if not problems:
            complete.append(step)
        elif listed_by_sdtune(folder):
            trial.problems += [f"after the kill, taken for complete: {p}" for p in problems]
        else:
            trial.problems += [f"after the kill, incomplete (ignored by sdtune): {p}" for p in problems]
    trial.newest = max(complete, default=0)


def _check_resume(trial, returncode, text, run, out):
    """(c) the resume ran to the end from the newest complete checkpoint (or from scratch)."""
    if trial.newest:
        said = f"sdtune: resumed from {out / f'checkpoint-{trial.newest}'} at step {trial.newest}"
    else:
        said = f"sdtune: no checkpoint in {out} to resume from; starting a new run"
    expected = f"steps: {run.steps} (this run {run.steps - trial.newest},"
    trial.resumed = returncode == 0 and said in text and expected in text
    if not trial.resumed:
        tail = "\n      ".join(text.splitlines()[-8:])
        trial.problems.append(f"resume: exit {returncode}, want '{said}' and '{expected}'; output ends:\n"
                              f"      {tail}")


def _check_result(trial, out, ref, layout):
    """(d) the final pipeline, the checkpoints and the logged losses equal the reference run's, and
    nothing else is left in OUT."""
    left = leftovers(out, ref.out)
    if left:
        trial.problems.append(f"left in OUT after the resume: {', '.join(left)}")
    final = final_files(ref.out)
    missing = [n for n in final if not (out / n).is_file()]
    differences, trial.whole_files_differ = compare_files(out, ref.out, [n for n in final if n not in missing])
    trial.bitwise = not differences and not missing
    if missing:
        trial.problems.append(f"final model: missing {', '.join(missing)}")
    trial.problems += [f"final model: {d}" for d in differences]
    ckpts, ref_ckpts = checkpoints(out), checkpoints(ref.out)
    if ckpts.keys() != ref_ckpts.keys():
        trial.problems.append(f"checkpoints at the end: {sorted(ckpts)}, reference {sorted(ref_ckpts)}")
    for step, folder in sorted(ckpts.items()):
        trial.problems += [f"at the end: {p}" for p in check_checkpoint(folder, layout, ref.out / folder.name)]
    # Steps between the last checkpoint and the kill are logged twice, with the same loss.
    try:
        logged = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
        reference = {r["step"]: r["loss"] for r in map(json.loads, (ref.out / "logs" / "metrics.jsonl").open())}
        wrong = sorted({r["step"] for r in logged if reference.get(r["step"]) != r["loss"]})
        unlogged = sorted(reference.keys() - {r["step"] for r in logged})
        if wrong or unlogged:
            trial.problems.append(f"logged losses: steps {wrong} differ, steps {unlogged} missing")
    except (OSError, ValueError, KeyError) as e:
        trial.problems.append(f"logs/metrics.jsonl unreadable: {e}")


def run_trial(index, target, run, ref, out, rng, log):
    """One trial into the fresh folder `out`: run, kill at `target`, check, resume, check."""
    trial = Trial(index, target)
    layout = files_under(ref.out / f"checkpoint-{run.steps}")
    start = time.monotonic()
    proc = run.start(out, log)
    try:
        trial.killed = _kill_at_target(proc, run, ref, out, layout, target, rng, start)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    trial.kill_seconds = time.monotonic() - start
    if not trial.killed and proc.returncode != 0:
        trial.problems.append(f"the run failed by itself ({proc.returncode}); see {log}")
    trial.phase, trial.writing = _interrupted(out, run, layout)
    _check_after_kill(trial, out, ref, layout)
    resume_log = Path(log).with_suffix(".resume.log")
    resume = run.start(out, resume_log, resume=True)
    try:
        returncode = resume.wait(timeout=10 * ref.seconds + 60)
    except subprocess.TimeoutExpired:  # a hang: killed, and reported as a failed resume
        resume.kill()
        returncode = resume.wait()
    _check_resume(trial, returncode, resume_log.read_text(), run, out)
    if returncode == 0:
        _check_result(trial, out, ref, layout)
    return trial


def plan(trials):
    """The targets of `trials` trials: every other one at a uniform random time, the rest cycling
    through the writes (checkpoints twice as often as the rarer prune and final model)."""
    writes = ("checkpoint", "prune", "checkpoint", "final")
    return ["uniform" if i % 2 == 0 else writes[i // 2 % len(writes)] for i in range(trials)]


def summary(trials):
    """'N trials: K killed, R resumed, B bitwise equal'."""
    return (f"{len(trials)} trials: {sum(t.killed for t in trials)} killed, "
            f"{sum(t.resumed for t in trials)} resumed, {sum(t.bitwise for t in trials)} bitwise equal")
