"""The audit review behind ``imgfeat serve --audit REPORT``: every image ``imgfeat audit`` ranked, per issue (one TSV
each: flagged first, then the rest, worst first), and the reviewer's decisions - keep, relabel to the suggestion or
any label, drop - on any image of the report or of the served collection. The decisions are kept in the serve cache
(never in the store or the report), downloadable as ``id<TAB>decision<TAB>new_label``, which ``probe``, ``diffuse``
and ``audit`` take back with ``--corrections`` (``audit`` then no longer flags what was kept)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import READ_ONLY_ERRNOS, DamagedFileError, ImgfeatError, bad_param, is_disk_full
from ..files import write_atomic
from ..tools.audit import ISSUES
from ..tools.labels import DECISIONS, read_decisions

ISSUE_FILES = tuple(i for i in ISSUES if i != "leak")  # the per-image issues (leaks are pairs)


class UnknownSuspect(ImgfeatError):
    """A decision on an id neither the report nor the collection holds, or a page of an issue the report lacks."""


class NewLabel(ImgfeatError):
    """A relabel to a label no image has, without the confirmation that it is meant."""


class DecisionNotKept(ImgfeatError):
    """The decision could not be written (a full disk): nothing was changed."""


class _Ranking:
    """One issue's TSV, every image ranked as audit wrote it; rows are parsed when a page asks for them (a
    60,000-image report is 60,000 short strings, not 60,000 dicts)."""

    def __init__(self, path: Path) -> None:
        lines = path.read_text(encoding="utf-8").splitlines()
        self.header = lines[0].split("\t")
        self.lines = lines[1:]
        flag = self.header.index("flag")
        self.flagged = sum(1 for line in self.lines if line.split("\t")[flag] == "1")
        self.position = {line.split("\t", 1)[0]: j for j, line in enumerate(self.lines)}

    def row(self, j: int) -> dict:
        row = dict(zip(self.header, self.lines[j].split("\t")))
        labels = row.get("neighbour_labels", "").split(",") if row.get("neighbour_labels") else []
        return {"id": row["id"], "score": float(row["score"]), "flag": row.get("flag") == "1",
                "given": row.get("given", ""), "suggested": row.get("suggested", ""),
                "reviewed": row.get("reviewed", ""),
                "neighbours": [{"id": i, "label": lab} for i, lab in zip(row.get("neighbours", "").split(","),
                                                                        labels + [""] * 10) if i]}

    def labels(self) -> set[str]:
        cols = [self.header.index(c) for c in ("given", "suggested") if c in self.header]
        return {parts[c] for line in self.lines for parts in [line.split("\t")] for c in cols if parts[c]}


class Review:
    def __init__(self, report: str | Path, cache: Path) -> None:
        self.report = Path(report)
        if not (self.report / "summary.json").is_file():
            raise ImgfeatError(f"--audit {report} is not a report folder of imgfeat audit (no summary.json)")
        self.rankings: dict[str, _Ranking] = {}
        for name in ISSUE_FILES:
            path = self.report / f"{name}.tsv"
            if path.is_file():
                self.rankings[name] = _Ranking(path)
        self.known_labels = set().union(*(r.labels() for r in self.rankings.values())) if self.rankings else set()
        # kept in the serve cache root by the report's path: they outlive a new generation of the served store
        report_key = hashlib.sha256(str(self.report.resolve()).encode("utf-8")).hexdigest()[:16]
        self.file = cache / f"review-{report_key}" / "audit-decisions.tsv"
        # the labels reviewers created (confirmed in the app), one a line: a relabel in the decisions file to a
        # label neither the report nor this list knows was not made in the app, and is refused
        self.created_file = self.file.with_name("created-labels.txt")
        self._lock = threading.Lock()
        self.decisions: dict[str, tuple[str, str]] = {}
        created = self._created()
        self.known_labels |= created
        if self.file.is_file():
            try:
                self.decisions = read_decisions(self.file, "the review's decisions file")
            except ImgfeatError as exc:  # serve's own file, damaged or edited: exit 1, with what to do
                raise DamagedFileError(f"{exc}; fix that line, or move the file away to start the review over "
                                       "(download its decisions first if you need them)") from None
            unknown = sorted({label for _, label in self.decisions.values() if label} - self.known_labels)
            if unknown:
                raise DamagedFileError(
                    f"the review's decisions file {self.file} relabels to {unknown[:3]}, label(s) neither the audit "
                    "report nor a reviewer created: it was edited outside the app; fix those lines, or move the file "
                    "away to start the review over")

    def _created(self) -> set[str]:
        try:
            return {line for line in self.created_file.read_text(encoding="utf-8").splitlines() if line}
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedFileError(f"the review's created-labels file {self.created_file} cannot be read ({exc}): "
                               "delete it (its labels are then refused in the decisions file)") from None

    def summary(self, extra_labels: Iterable[str] = ()) -> dict:
        return {"issues": {name: r.flagged for name, r in self.rankings.items()},
                "ranked": {name: len(r.lines) for name, r in self.rankings.items()},
                "labels": sorted(self.known_labels | set(extra_labels)), "decided": len(self.decisions)}

    def _ranking(self, issue: str) -> _Ranking:
        if issue not in self.rankings:
            raise UnknownSuspect(f"no issue {issue!r} in this report (it has {', '.join(sorted(self.rankings))})")
        return self.rankings[issue]

    def page(self, issue: str, offset: int, limit: int, around: Optional[str] = None) -> dict:
        """``limit`` images of ``issue`` from ``offset`` (or from the page holding the id ``around``), flagged first,
        worst first, with the decisions made."""
        ranking = self._ranking(issue)
        if around is not None:
            if around not in ranking.position:
                raise UnknownSuspect(f"{around!r} is not ranked by the {issue} issue of this report")
            offset = ranking.position[around] // limit * limit
        items = []
        for j in range(offset, min(offset + limit, len(ranking.lines))):
            row = ranking.row(j)
            decision, label = self.decisions.get(row["id"], ("", ""))
            items.append({**row, "decision": decision, "new_label": label})
        return {"issue": issue, "total": len(ranking.lines), "flagged": ranking.flagged, "offset": offset,
                "items": items}

    def suggestion(self, rid: str) -> str:
        """The label the audit suggests for ``rid`` (the label issue's), or ""."""
        for name in sorted(self.rankings, key=lambda n: n != "label"):
            ranking = self.rankings[name]
            if rid in ranking.position:
                suggested = ranking.row(ranking.position[rid])["suggested"]
                if suggested:
                    return suggested
        return ""

    def in_report(self, rid: str) -> bool:
        return any(rid in r.position for r in self.rankings.values())

    def decide(self, rid: str, decision: str, new_label: Optional[str] = None, *,
               in_collection: Callable[[str], bool] = lambda rid: False, extra_labels: Iterable[str] = (),
               confirm_new_label: bool = False) -> dict:
        """Record ``decision`` on ``rid``, any image of the report or of the collection (``UnknownSuspect`` for
        others). A relabel without ``new_label`` takes the audit's suggestion; a label that no image has yet
        (``NewLabel``) needs ``confirm_new_label``."""
        if decision not in DECISIONS:
            raise bad_param("decision", f"one of {DECISIONS}", decision)
        if not self.in_report(rid) and not in_collection(rid):
            raise UnknownSuspect(f"{rid!r} is neither an image of this audit report nor of the served collection")
        if decision == "relabel" and not new_label:
            new_label = self.suggestion(rid)
            if not new_label:
                raise bad_param("new_label", "the label to give (the audit suggests none for this image)", new_label)
        if any(c in (rid or "") + (new_label or "") for c in "\t\n\r"):
            raise bad_param("id", "an id and label without tabs or newlines", rid)
        if decision == "relabel" and new_label not in self.known_labels | set(extra_labels) and not confirm_new_label:
            raise NewLabel(f"{new_label!r} is not a label of this collection; to create it, send the decision again "
                           "with confirm_new_label: true")
        with self._lock:
            before = self.decisions.get(rid)
            self.decisions[rid] = (decision, (new_label or "") if decision == "relabel" else "")
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                if decision == "relabel" and new_label not in self.known_labels:  # created: recorded before it is used
                    write_atomic(self.created_file, "".join(f"{lab}\n" for lab in sorted(
                        self._created() | {new_label})).encode("utf-8"))
                write_atomic(self.file, self.tsv().encode("utf-8"))
            except OSError as exc:
                if before is None:
                    del self.decisions[rid]
                else:
                    self.decisions[rid] = before
                if is_disk_full(exc):
                    raise DecisionNotKept(f"the decision was not kept: the disk holding {self.file.parent} is full; "
                                          "free some space and decide again (earlier decisions are safe)") from None
                if exc.errno in READ_ONLY_ERRNOS:
                    raise DecisionNotKept(f"the decision was not kept: {self.file.parent} cannot be written "
                                          f"({exc.strerror}); restart serve with a writable --cache") from None
                raise
            if decision == "relabel":
                self.known_labels.add(new_label)
        return {"id": rid, "decision": decision, "new_label": self.decisions[rid][1]}

    def tsv(self) -> str:
        return "id\tdecision\tnew_label\n" + "".join(f"{rid}\t{d}\t{label}\n"
                                                     for rid, (d, label) in sorted(self.decisions.items()))
