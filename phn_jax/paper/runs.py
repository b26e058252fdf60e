"""The runs a report is made of: finding them, grouping one configuration's seeds (`Group`), naming
them as the paper does, the paper's settings of a table's row (`PAPER_SETTINGS`) and the row's
configuration (`find`); the published numbers (`paper_results.csv`)."""
from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

from phn_jax import metrics, report
from phn_jax.config import with_defaults
from phn_jax.data.streams import KINDS

PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")
# Runs whose results fields (`report.results_fields`) differ only in these are one configuration's seeds.
SEED_FIELDS = ("seed", "data.seed")
TABLE2_METHODS = ("Naive", "EWC", "LR-1", "HN-1", "LR-2", "HN-2", "LR-3", "HN-3", "LR-4", "HN-4", "HN-F")
# Table 1 and Figure 7: (clean, noisy) twins; the paper's, then `make paper QUICK=1`'s
CLEAN_NOISY = (("clean_cifar100", "noisy_cifar100"), ("clean_digits", "noisy_digits"))
VON_OSWALD_STREAMS = ("permuted_mnist", "split_mnist")  # von Oswald et al.'s Table 1 (paper_results table vo1)
VON_OSWALD_SYSTEMS = {"tir": "HNET+TIR", "replay": "HNET+R"}  # their replay systems, by strategy
ONE_HEAD, HEAD_PER_TASK = "one head", "a head per task"  # the MLP's heads (setting_name)
# Tables 2, 4, 5, 6: the paper's streams first, then any other class-split stream with runs
PAPER_STREAMS = ("split_cifar100", "split_tinyimagenet")
NOT_CLASS_SPLIT = ("transfer",) + tuple(s for pair in CLEAN_NOISY for s in pair)
DEPTHS = range(5)
HEMATI_STREAMS = PAPER_STREAMS + CLEAN_NOISY[0]  # the streams of Hemati et al.'s Tables 1, 2, 4, 5, 6
# The paper's settings beyond a row's name (method, look-ahead order, replay coefficient), one line per
# (field, the methods it applies to (the name before "-"; "" for every method), the streams, the value). On
# a stream listed here a configuration fills a row only where each field that applies to its method has
# this value; the configurations of the row at other settings are named under the table. Hemati et al.:
# §4 and the appendix; von Oswald et al.: their code, as experiments/configs/{split,permuted}_mnist.py set it.
PAPER_SETTINGS = (
    ("train.epochs", "", HEMATI_STREAMS, 100),
    ("train.batch_size", "", HEMATI_STREAMS, 64),
    ("optim.lr", "", HEMATI_STREAMS, 1e-3),
    ("strategy.beta", "HN", HEMATI_STREAMS, 0.5),
    ("strategy.buffer_size", "LR", ("split_cifar100",) + CLEAN_NOISY[0], 200),
    ("strategy.buffer_size", "LR", ("split_tinyimagenet",), 400),
    ("strategy.replay_batch_size", "LR", HEMATI_STREAMS, 64),
    ("strategy.ewc_lambda", "EWC", HEMATI_STREAMS, 1.0),
    ("train.iterations", "HNET", ("split_mnist",), 2000),
    ("train.iterations", "HNET", ("permuted_mnist",), 5000),
    ("train.batch_size", "HNET", VON_OSWALD_STREAMS, 128),
    ("optim.lr", "HNET", ("split_mnist",), 1e-3),
    ("optim.lr", "HNET", ("permuted_mnist",), 1e-4),
    ("strategy.beta", "HNET", ("split_mnist",), 0.01),
    ("strategy.beta", "HNET", ("permuted_mnist",), 0.1),
)


def paper_settings(stream: str, method: str) -> dict | None:
    """{field: the paper's value} of the fields of PAPER_SETTINGS that apply to `method` on `stream`;
    None where the paper has no runs of the stream (our own streams: every setting counts)."""
    if not any(stream in streams for _, _, streams, _ in PAPER_SETTINGS):
        return None
    return {field: value for field, kind, streams, value in PAPER_SETTINGS
            if stream in streams and kind in ("", method.split("-")[0])}


def title(stream: str) -> str:
    """The stream's name in the paper and the report (`data.streams.KINDS`)."""
    return KINDS[stream].title if stream in KINDS else stream


def load_paper_results(path: str | Path = PAPER_RESULTS) -> list[dict]:
    """The rows of `paper_results.csv`, with table an int (Hemati et al.'s; another paper's a string,
    e.g. 'vo1'), mean a float and std a float or None."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["table"] = int(r["table"]) if r["table"].isdigit() else r["table"]
        r["mean"] = float(r["mean"])
        r["std"] = float(r["std"]) if r["std"] else None
    return rows


def paper_value(results: list[dict], table: int, stream: str, method: str, metric: str,
                setting: str = "") -> dict | None:
    """The published cell (a row of `load_paper_results`), or None where the paper has none."""
    for r in results:
        if (r["table"], r["stream"], r["method"], r["metric"], r["setting"]) == (table, stream, method, metric, setting):
            return r
    return None


def method_name(config: dict) -> str:
    """The paper's name of a run's method: Naive, EWC, Joint, LR-k, HN-k, HN-F (HN-0); HNET (von Oswald
    et al.'s name) for HN with their MLP target (model.arch=mlp), HNET+TIR and HNET+R for their replay
    systems (strategies tir and replay)."""
    s = config["strategy"]
    name, k = s["name"], s["freeze_depth"]
    if name == "hn" and config.get("model", {}).get("arch") == "mlp":
        return "HNET"
    if name in VON_OSWALD_SYSTEMS:
        return VON_OSWALD_SYSTEMS[name]
    if name == "hn":
        return "HN-F" if k == 0 else f"HN-{k}"
    if name == "lr":
        return f"LR-{k}"
    return {"naive": "Naive", "ewc": "EWC", "joint": "Joint"}.get(name, name)


def setting_name(config: dict) -> str:
    """What the paper's tables vary within a method: HN's look-ahead order, LR's replay coefficient;
    ", pretrained" where the frozen part came from strategy.frozen_init (the reference scripts' way);
    for von Oswald et al.'s MLP, one head for every task (strategy.scenario=2: their CL2) or a head per task."""
    s = config["strategy"]
    pretrained = ", pretrained" if s["frozen_init"] != "none" else ""  # (not the paper's setting)
    one_head = s.get("scenario", 1) == 2
    if s["name"] == "hn":
        return f"order={s['order']}{pretrained}" + (", one head" if one_head else "")
    if s["name"] in VON_OSWALD_SYSTEMS:
        return ONE_HEAD if one_head else HEAD_PER_TASK
    if s["name"] == "lr":
        return f"c={float(s['replay_coef']):g}{pretrained}"
    return ""


def find_runs(root: str | Path) -> list[tuple[Path, dict, dict]]:
    """(directory, config (completed by `config.with_defaults`), metrics) of every run under `root` (sorted
    by path)."""
    runs = []
    for m in sorted(Path(root).rglob(report.METRICS_JSON)):
        c = m.with_name(report.CONFIG_JSON)
        if c.is_file():
            runs.append((m.parent, with_defaults(json.loads(c.read_text())), json.loads(m.read_text())))
    return runs


@dataclasses.dataclass
class Group:
    """One configuration's runs: its seeds' results directories and summaries, named as the paper names
    a row. `flat`: its results fields but the seed (`report.results_fields`); `aggregate`: mean ± std
    over its seeds (`metrics.aggregate_seeds`); `extra`: the fields that tell it from configurations
    of the same name (in `label`); `repeated`: older runs of a seed it has (not counted); `finished`:
    every seed's run completed its stream; `newest`: when its newest metrics were written (ns)."""

    stream: str
    method: str
    setting: str
    flat: dict
    seeds: list[int]
    dirs: list[Path]
    summaries: list[dict]
    repeated: list[Path]
    aggregate: dict = dataclasses.field(default_factory=dict)
    extra: str = ""
    label: str = ""

    @property
    def finished(self) -> bool:
        return all(s["completed_experiences"] == len(s["accuracy_matrix"]) for s in self.summaries)

    @property
    def newest(self) -> int:
        return max((d / report.METRICS_JSON).stat().st_mtime_ns for d in self.dirs)


def group_runs(runs) -> list[Group]:
    """Runs of one configuration together, one `Group` each, sorted by stream, method, setting and
    label. A seed run twice (alone and in a multi-seed run, say) counts once, its newest run."""
    found: dict[str, dict] = {}
    for d, config, summary in sorted(runs, key=lambda r: (r[0] / report.METRICS_JSON).stat().st_mtime_ns):
        flat = {k: v for k, v in report.results_fields(config).items() if k not in SEED_FIELDS}
        entry = found.setdefault(json.dumps(flat, sort_keys=True, default=str),
                                 {"config": config, "flat": flat, "runs": {}, "repeated": []})
        if config["seed"] in entry["runs"]:  # the same seed again: the newest run counts, the older is listed
            entry["repeated"].append(entry["runs"][config["seed"]][0])
        entry["runs"][config["seed"]] = (d, summary)
    out = []
    for entry in found.values():
        seeds = sorted(entry["runs"])
        config = entry["config"]
        g = Group(config["data"]["name"], method_name(config), setting_name(config), entry["flat"], seeds,
                  [entry["runs"][s][0] for s in seeds], [entry["runs"][s][1] for s in seeds], entry["repeated"])
        g.aggregate = metrics.aggregate_seeds(g.summaries, g.seeds)
        out.append(g)
    by_name = defaultdict(list)
    for g in out:
        by_name[(g.stream, g.method, g.setting)].append(g)
    for same in by_name.values():
        differ = sorted({k for g in same for k in g.flat if len({json.dumps(h.flat.get(k)) for h in same}) > 1})
        for g in same:
            g.extra = ", ".join(f"{k}={g.flat.get(k)}" for k in differ)
            g.label = " ".join(x for x in (g.method, g.setting, f"({g.extra})" if g.extra else "") if x)
    return sorted(out, key=lambda g: (g.stream, g.method, g.setting, g.label))


def _off_settings(g: dict, wanted: dict) -> list[str]:
    return [f"{k}={g.flat.get(k)!r} (the paper's {v!r})" for k, v in wanted.items() if g.flat.get(k) != v]


def find(groups, stream: str, method: str, setting: str | None, notes: list[str] | None = None):
    """(the configuration of a row, the row's name) or (None, None): a finished configuration of the
    stream, the method and the setting (None: the default); on a stream of the paper's, one at the
    paper's settings (`paper_settings`). Where several qualify, the one with the most seeds (then the
    newest), the row's name saying the settings that tell it from the others. What else was found for
    the row (another qualifying configuration, one at other settings, an unfinished one) is named in
    `notes`."""
    default = {"HN": "order=first", "HNET": "order=first", "LR": "c=1", **dict.fromkeys(VON_OSWALD_SYSTEMS.values(),
                                                                                   HEAD_PER_TASK)}
    want = setting if setting is not None else default.get(method.split("-")[0], "")
    found = [g for g in groups if (g.stream, g.method, g.setting) == (stream, method, want)]
    wanted = paper_settings(stream, method) or {}
    fits = [g for g in found if g.finished and not _off_settings(g, wanted)]
    best = max(fits, key=lambda g: (len(g.seeds), g.newest), default=None)
    if best is None:
        name = None
    else:
        differ = sorted(k for k in best.flat if len({json.dumps(g.flat.get(k)) for g in fits}) > 1)
        name = method + (f" ({', '.join(f'{k}={best.flat[k]}' for k in differ)})" if differ else "")
    if notes is not None:
        row = f"{method}{'' if setting is None else ', ' + want}, {title(stream)}"
        for g in found:
            if g is best:
                continue
            off = _off_settings(g, wanted)
            why = ("unfinished: " + ", ".join(f"{s['completed_experiences']} of {len(s['accuracy_matrix'])} "
                                                "experiences" for s in g.summaries) if not g.finished else
                   "not at the paper's settings: " + "; ".join(off) if off else
                   f"also qualifies; the row shows {name} (the most seeds, then the newest)")
            notes.append(f"{row}: not in the table: {g.label} (seeds {', '.join(map(str, g.seeds))}), {why}")
    return best, name
