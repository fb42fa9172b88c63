"""The audit review behind ``imgfeat serve --audit REPORT``: the suspects ``imgfeat audit`` wrote (one TSV per
issue, worst first) and the reviewer's decisions on them - keep, relabel to the suggestion (or another label),
drop - kept in the serve cache (never in the store or the report), downloadable as ``id<TAB>decision<TAB>new_label``,
which ``probe``, ``diffuse`` and ``audit`` take back with ``--corrections``."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Optional

from ..errors import ImgfeatError, bad_param
from ..files import write_atomic
from ..tools.audit import ISSUES
from ..tools.labels import DECISIONS

ISSUE_FILES = tuple(i for i in ISSUES if i != "leak")  # the per-image issues (leaks are pairs)


class UnknownSuspect(ImgfeatError):
    """A decision on an id the report does not flag."""


class Review:
    def __init__(self, report: str | Path, cache: Path) -> None:
        self.report = Path(report)
        if not (self.report / "summary.json").is_file():
            raise ImgfeatError(f"--audit {report} is not a report folder of imgfeat audit (no summary.json)")
        self.suspects: dict[str, list[dict]] = {}
        for name in ISSUE_FILES:
            path = self.report / f"{name}.tsv"
            if path.is_file():
                self.suspects[name] = _read_suspects(path)
        # the suspects' ids, with the suggested label (the label issue's first: it is the one a relabel takes)
        self.suggestion: dict[str, str] = {}
        for name in sorted(self.suspects, key=lambda n: n != "label"):
            for row in self.suspects[name]:
                self.suggestion.setdefault(row["id"], row.get("suggested", ""))
        # kept in the serve cache root by the report's path: they outlive a new generation of the served store
        report_key = hashlib.sha256(str(self.report.resolve()).encode("utf-8")).hexdigest()[:16]
        self.file = cache / f"review-{report_key}" / "audit-decisions.tsv"
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.decisions: dict[str, tuple[str, str]] = {}
        if self.file.is_file():
            for line in self.file.read_text(encoding="utf-8").splitlines()[1:]:
                rid, decision, label = (line.split("\t") + ["", ""])[:3]
                self.decisions[rid] = (decision, label)

    def summary(self) -> dict:
        return {"issues": {name: len(rows) for name, rows in self.suspects.items()},
                "decided": len(self.decisions)}

    def page(self, issue: str, offset: int, limit: int) -> dict:
        if issue not in self.suspects:
            raise UnknownSuspect(f"no issue {issue!r} in this report (it has {', '.join(sorted(self.suspects))})")
        rows = self.suspects[issue]
        items = []
        for row in rows[offset:offset + limit]:
            decision, label = self.decisions.get(row["id"], ("", ""))
            items.append({**row, "decision": decision, "new_label": label})
        return {"issue": issue, "total": len(rows), "offset": offset, "items": items}

    def decide(self, rid: str, decision: str, new_label: Optional[str] = None) -> dict:
        """Record ``decision`` on the suspect ``rid`` (``UnknownSuspect`` if the report does not flag it); a relabel
        without ``new_label`` takes the audit's suggestion."""
        if decision not in DECISIONS:
            raise bad_param("decision", f"one of {DECISIONS}", decision)
        if rid not in self.suggestion:
            raise UnknownSuspect(f"{rid!r} is not a suspect of this audit report")
        if decision == "relabel" and not new_label:
            new_label = self.suggestion[rid]
            if not new_label:
                raise bad_param("new_label", "the label to give (this suspect has no suggested label)", new_label)
        if any(c in (rid or "") + (new_label or "") for c in "\t\n\r"):
            raise bad_param("id", "an id and label without tabs or newlines", rid)
        with self._lock:
            self.decisions[rid] = (decision, (new_label or "") if decision == "relabel" else "")
            write_atomic(self.file, self.tsv().encode("utf-8"))
        return {"id": rid, "decision": decision, "new_label": self.decisions[rid][1]}

    def tsv(self) -> str:
        return "id\tdecision\tnew_label\n" + "".join(f"{rid}\t{d}\t{label}\n"
                                                     for rid, (d, label) in sorted(self.decisions.items()))


def _read_suspects(path: Path) -> list[dict]:
    """The flagged rows of an issue TSV (worst first, as audit wrote them)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    out = []
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        if row.get("flag") != "1":
            continue
        out.append({"id": row["id"], "score": float(row["score"]), "given": row.get("given", ""),
                    "suggested": row.get("suggested", ""),
                    "neighbours": [{"id": i, "label": lab} for i, lab in zip(
                        row.get("neighbours", "").split(","), (row.get("neighbour_labels", "").split(",")
                                                               if row.get("neighbour_labels") else []) + [""] * 10)
                                   if i]})
    return out
