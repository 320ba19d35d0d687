"""Summaries and renderings of a benchmark run: text table, JSON, Markdown, bar chart.

What: turns the per-repetition results collected by ``run.py`` into per-(scenario,
implementation) medians and ranges of wall and CPU time per operation, ratios to the stdlib,
target marks and floors, and renders them.

Why: kept apart from the runner so the scheduling code stays short and so that later tools can
re-render a saved ``--json`` file (``render_text(json.load(f))``).
"""

from __future__ import annotations

import statistics

OK, FAILED, TIMEOUT, SKIPPED = "OK", "FAILED", "TIMEOUT", "SKIPPED"


# ---------------------------------------------------------------- summaries


def _spread(values):
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize_runs(runs) -> dict:
    """Status, wall/op and cpu/op spreads of the repetitions of one (scenario, impl)."""
    good = [r for r in runs if r["status"] == OK]
    failed = [r for r in runs if r["status"] == FAILED]
    timed_out = [r for r in runs if r["status"] == TIMEOUT]
    if timed_out:
        status, bad = TIMEOUT, timed_out
    elif failed:
        status, bad = FAILED, failed
    elif good:
        status, bad = OK, []
    else:
        status, bad = SKIPPED, []
    out = {
        "status": status,
        "reps": len(runs),
        "bad_reps": len(bad),
        "detail": bad[0]["detail"] if bad else (good[0]["detail"] if good else ""),
        "wall_per_op": _spread([r["wall"] / r["ops"] for r in good]),
        "cpu_per_op": _spread([r["cpu"] / r["ops"] for r in good]),
        "runs": runs,
    }
    extras = {}
    for r in good:
        for k, v in (r.get("extra") or {}).items():
            if isinstance(v, (int, float)):
                extras.setdefault(k, []).append(v)
    if extras:
        out["extra"] = {k: statistics.median(v) for k, v in extras.items()}
    return out


def _ratio(base, impl):
    if not base or not impl or impl["median"] <= 0:
        return None
    return base["median"] / impl["median"]


def build_report(meta, scenarios, impl_names, runs, baseline, target_impl) -> dict:
    """The whole report as plain data (what ``--json`` writes).

    ``scenarios``: the registry entries run (floors included); ``runs``: a list of
    per-repetition dicts with scenario, impl, rep, status, ops, wall, cpu, detail.
    """
    by_key = {}
    for r in runs:
        by_key.setdefault((r["scenario"], r["impl"]), []).append(r)
    floors, rows = [], []
    for sc in scenarios:
        if sc.kind == "floor":
            s = summarize_runs(by_key.get((sc.name, "floor"), []))
            s.update(name=sc.name, label=sc.label, unit=sc.unit, doc=sc.doc)
            if sc.bytes_per_op and s["wall_per_op"]:
                s["gb_per_s"] = sc.bytes_per_op / s["wall_per_op"]["median"] / 1e9
            floors.append(s)
    floor_of = {f["name"]: f for f in floors}
    for sc in scenarios:
        if sc.kind == "floor":
            continue
        impls = []
        for name in impl_names:
            if (sc.name, name) not in by_key:
                continue
            s = summarize_runs(by_key[(sc.name, name)])
            s["name"] = name
            impls.append(s)
        base = next((i for i in impls if i["name"] == baseline and i["status"] == OK), None)
        for s in impls:
            s["ratio"] = s["cpu_ratio"] = s["target"] = s["target_met"] = None
            if base is not None and s["status"] == OK:
                s["ratio"] = _ratio(base["wall_per_op"], s["wall_per_op"])
                s["cpu_ratio"] = _ratio(base["cpu_per_op"], s["cpu_per_op"])
            if s["name"] == target_impl and sc.target is not None:
                s["target"] = sc.target
                if s["ratio"] is not None:
                    s["target_met"] = s["ratio"] >= sc.target
            s["floor_within"] = s["floor_multiple"] = s["floor_met"] = None
            floor = floor_of.get(sc.floors[0]) if sc.floors else None
            if s["name"] == target_impl and sc.floor_within is not None and floor is not None:
                s["floor_within"] = sc.floor_within
                if s["status"] == OK and floor["status"] == OK and floor["wall_per_op"]:
                    s["floor_multiple"] = (
                        s["wall_per_op"]["median"] / floor["wall_per_op"]["median"]
                    )
                    s["floor_met"] = s["floor_multiple"] <= sc.floor_within
        rows.append(
            {
                "name": sc.name,
                "group": sc.group,
                "unit": sc.unit,
                "doc": sc.doc,
                "target": sc.target,
                "floors": list(sc.floors),
                "impls": impls,
            }
        )
    return {"meta": meta, "baseline": baseline, "floors": floors, "scenarios": rows}


# ---------------------------------------------------------------- formatting


def fmt_time(seconds, unit=None):
    """``1.23 ms``; with ``unit`` (a (name, scale) pair) the number is given in that unit."""
    if seconds is None:
        return "-"
    unit = unit or time_unit(seconds)
    v = seconds / unit[1]
    digits = 0 if v >= 100 else 1 if v >= 10 else 2
    return "%.*f %s" % (digits, v, unit[0])


def time_unit(seconds):
    for name, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return name, scale
    return "ns", 1e-9


def fmt_spread(sp) -> str:
    """``1.23 ms [1.20-1.31]``: median, then min-max in the median's unit."""
    if not sp:
        return "-"
    unit = time_unit(sp["median"])
    lo = fmt_time(sp["min"], unit).split()[0]
    hi = fmt_time(sp["max"], unit).split()[0]
    return "%s [%s-%s]" % (fmt_time(sp["median"], unit), lo, hi)


def fmt_ratio(r) -> str:
    return "-" if r is None else "%.2fx" % r


def _status_text(s, detail=True) -> str:
    if s["status"] in (TIMEOUT, FAILED):
        text = "%s (%d/%d reps)" % (s["status"], s["bad_reps"], s["reps"])
        return text + (": " + s["detail"] if detail else "")
    return s["status"]


def _floor_note(f):
    """The extra figure a floor reports: a throughput or an efficiency."""
    if f.get("gb_per_s"):
        return "%.2f GB/s" % f["gb_per_s"]
    if "efficiency" in (f.get("extra") or {}):
        return "efficiency %.2f" % f["extra"]["efficiency"]
    return ""


def _ok_cells(s, base):
    """Wall, CPU, ratios, target and mark of one implementation's verified result."""
    return [
        fmt_spread(s["wall_per_op"]),
        fmt_time(s["cpu_per_op"]["median"]),
        "base" if base else fmt_ratio(s["ratio"]),
        "base" if base else fmt_ratio(s["cpu_ratio"]),
        ">=%gx" % s["target"] if s["target"] is not None else "",
        _mark(s),
    ]


def _mark(s) -> str:
    if s["target"] is None:
        return ""
    if s["target_met"] is None:
        return "n/a"
    return "ok" if s["target_met"] else "MISS"


def _floor_text(f) -> str:
    if f["status"] != OK:
        return "%s: %s" % (f["label"], f["status"])
    text = "%s: %s per %s" % (f["label"], fmt_spread(f["wall_per_op"]), f["unit"])
    if f.get("gb_per_s"):
        text += " (%.2f GB/s)" % f["gb_per_s"]
    if "efficiency" in (f.get("extra") or {}):
        text += " (efficiency %.2f)" % f["extra"]["efficiency"]
    return text


def _floor_multiples(f, impls) -> str:
    """How many times the floor each implementation's median is."""
    if f["status"] != OK:
        return ""
    fm = f["wall_per_op"]["median"]
    parts = [
        "%s %.1fx" % (s["name"], s["wall_per_op"]["median"] / fm)
        for s in impls
        if s["status"] == OK and fm > 0
    ]
    return (("; " + ", ".join(parts) + " of it") if parts else "") + _floor_target(impls)


def _floor_target(impls) -> str:
    """The verdict on a scenario's ``floor_within`` target, if it has one."""
    for s in impls:
        if s.get("floor_within") is not None:
            verdict = {True: "ok", False: "MISS", None: "n/a"}[s.get("floor_met")]
            return " (target: %s <= %gx of it, %s)" % (s["name"], s["floor_within"], verdict)
    return ""


def _table(rows, header) -> list:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if r is header:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render_text(report) -> str:
    meta = report["meta"]
    floors = {f["name"]: f for f in report["floors"]}
    out = [
        "rmp side-by-side benchmark: %s" % meta.get("title", ""),
        "python %s on %s, %s CPUs, load average %s (start) / %s (end)"
        % (
            meta.get("python"),
            meta.get("platform"),
            meta.get("cpu_count"),
            meta.get("loadavg_start"),
            meta.get("loadavg_end"),
        ),
        "%s mode, %d repetition(s), each in a fresh interpreter; took %s"
        % ("quick" if meta.get("quick") else "full", meta.get("repeat", 0), meta.get("took")),
    ]
    if meta.get("unavailable"):
        out.append("not installed (skipped): %s" % ", ".join(meta["unavailable"]))
    if meta.get("skipped_scenarios"):
        out.append("skipped, a module is missing: %s" % "; ".join(meta["skipped_scenarios"]))
    if report["scenarios"]:
        out += [
            "",
            "Scenarios: time per operation, median [min-max] over the repetitions.",
            "ratio = %s median / implementation median (> 1: faster than the stdlib); "
            "cpu = user+sys of the worker" % report["baseline"],
            "and its reaped children (a fork server's children are not the worker's).",
            "",
        ]
        header = ["scenario", "impl", "wall/op", "cpu/op", "ratio", "cpu ratio", "target", "met"]
        rows, notes = [], {}
        for sc in report["scenarios"]:
            for i, s in enumerate(sc["impls"]):
                first = sc["name"] if i == 0 else ("(per %s)" % sc["unit"] if i == 1 else "")
                if s["status"] == OK:
                    base = s["name"] == report["baseline"]
                    rows.append([first, s["name"], *_ok_cells(s, base)])
                else:
                    rows.append([first, s["name"], _status_text(s, False), "", "", "", "", ""])
                    notes.setdefault(len(rows), []).append(
                        "! %s %s: %s" % (s["name"], s["status"], s["detail"])
                    )
            if len(sc["impls"]) == 1:
                rows.append(["(per %s)" % sc["unit"], "", "", "", "", "", "", ""])
            for fname in sc["floors"]:
                if fname in floors:
                    f = floors[fname]
                    text = "^ floor " + _floor_text(f) + _floor_multiples(f, sc["impls"])
                    notes.setdefault(len(rows), []).append(text)
        lines = _table(rows, header)
        # the floor lines go right under the rows of their scenario (after the header lines)
        rendered = lines[:2]
        for idx, line in enumerate(lines[2:]):
            rendered.append(line)
            for text in notes.get(idx + 1, []):
                rendered.append("    " + text)
        out += rendered
    if report["floors"]:
        out += ["", "Floors: no implementation, same run, fresh interpreters.", ""]
        rows = []
        for f in report["floors"]:
            if f["status"] == OK:
                note = _floor_note(f)
                rows.append(
                    [
                        f["name"],
                        f["label"],
                        f["unit"],
                        fmt_spread(f["wall_per_op"]),
                        fmt_time(f["cpu_per_op"]["median"]),
                        note,
                    ]
                )
            else:
                rows.append([f["name"], f["label"], f["unit"], _status_text(f, False), "", ""])
        out += _table(rows, ["floor", "what", "per", "wall/op", "cpu/op", "note"])
    misses = [
        "%s (%s %s, target >=%gx)" % (sc["name"], s["name"], fmt_ratio(s["ratio"]), s["target"])
        for sc in report["scenarios"]
        for s in sc["impls"]
        if s["target_met"] is False
    ] + [
        "%s (%s %.2fx its floor, target <=%gx)"
        % (sc["name"], s["name"], s["floor_multiple"], s["floor_within"])
        for sc in report["scenarios"]
        for s in sc["impls"]
        if s.get("floor_met") is False
    ]
    bad = [
        "%s / %s: %s" % (sc["name"], s["name"], _status_text(s))
        for sc in report["scenarios"]
        for s in sc["impls"]
        if s["status"] in (FAILED, TIMEOUT)
    ] + ["%s: %s" % (f["name"], _status_text(f)) for f in report["floors"] if f["status"] != OK]
    out.append("")
    if misses:
        out.append("targets missed (reported, not an error): " + "; ".join(misses))
    out.append("failures: " + ("none" if not bad else "%d" % len(bad)))
    out += ["  " + b for b in bad]
    return "\n".join(out) + "\n"


def render_markdown(report) -> str:
    meta = report["meta"]
    out = [
        "# rmp side-by-side benchmark",
        "",
        "python %s on %s, %s CPUs; %s mode, %d repetition(s) in fresh interpreters; took %s."
        % (
            meta.get("python"),
            meta.get("platform"),
            meta.get("cpu_count"),
            "quick" if meta.get("quick") else "full",
            meta.get("repeat", 0),
            meta.get("took"),
        ),
        "Time per operation, median [min-max]; ratio = %s median / implementation median "
        "(> 1: faster than the stdlib)." % report["baseline"],
        "",
    ]
    floors = {f["name"]: f for f in report["floors"]}
    if report["scenarios"]:
        out += [
            "| scenario | impl | wall/op | cpu/op | ratio | cpu ratio | target | met | floors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for sc in report["scenarios"]:
            ftext = "<br>".join(
                _floor_text(floors[n]).replace("|", "/") for n in sc["floors"] if n in floors
            )
            ftext += _floor_target(sc["impls"])
            for i, s in enumerate(sc["impls"]):
                name = "%s (per %s)" % (sc["name"], sc["unit"]) if i == 0 else ""
                if s["status"] == OK:
                    base = s["name"] == report["baseline"]
                    cells = _ok_cells(s, base)
                else:
                    cells = ["**%s**" % _status_text(s).replace("|", "/"), "", "", "", "", ""]
                out.append(
                    "| %s | %s | %s | %s |"
                    % (name, s["name"], " | ".join(cells), ftext if i == 0 else "")
                )
        out.append("")
    if report["floors"]:
        out += ["| floor | what | wall/op | cpu/op | note |", "| --- | --- | --- | --- | --- |"]
        for f in report["floors"]:
            if f["status"] == OK:
                note = _floor_note(f)
                out.append(
                    "| %s | %s (per %s) | %s | %s | %s |"
                    % (
                        f["name"],
                        f["label"],
                        f["unit"],
                        fmt_spread(f["wall_per_op"]),
                        fmt_time(f["cpu_per_op"]["median"]),
                        note,
                    )
                )
            else:
                out.append("| %s | %s | **%s** | | |" % (f["name"], f["label"], _status_text(f)))
        out.append("")
    return "\n".join(out)


def plot(report, path) -> str:
    """Write a horizontal bar chart of the ratios to ``path``; return a message saying what
    happened (matplotlib is optional: without it nothing is written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "--plot: matplotlib is not installed, no chart written "
            "(pip install matplotlib, or the project's 'bench' extra)"
        )
    labels, walls, cpus, targets = [], [], [], []
    for sc in report["scenarios"]:
        for s in sc["impls"]:
            if s["name"] == report["baseline"] or s["ratio"] is None:
                continue
            labels.append("%s\n%s" % (sc["name"], s["name"]))
            walls.append(s["ratio"])
            cpus.append(s["cpu_ratio"] or 0.0)
            targets.append(s["target"])
    if not labels:
        return "--plot: no ratio to plot (no implementation ran beside a working baseline)"
    height = 0.8 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(8, height))
    ys = list(range(len(labels)))
    ax.barh([y + 0.18 for y in ys], walls, height=0.36, label="wall-time ratio")
    ax.barh([y - 0.18 for y in ys], cpus, height=0.36, label="CPU-time ratio", alpha=0.6)
    for y, t in zip(ys, targets):
        if t is not None:
            ax.plot([t, t], [y - 0.4, y + 0.4], color="black", linestyle=":", linewidth=1.5)
    ax.axvline(1.0, color="red", linewidth=1.2)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        "%s time / implementation time (> 1: faster; dotted: target)" % report["baseline"]
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("rmp vs %s (median of %d runs)" % (report["baseline"], report["meta"]["repeat"]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "--plot: wrote %s" % path
