"""Admission in the generative simulation: the router's own rules on a token stream.

A request is refused at once (a 503 the client gets one RTT after sending it, never
placed on an engine) by the two rules the router applies, in its order:

- **capacity**: the fleet's load for the model, as the router sees it (sequences the
  workers reported in the last snapshot plus the requests sent since, over their
  sequence slots: ``router.admission.sequence_load``), has reached the class's ceiling
  (``Admission.by_load``);
- **deadline**: no candidate worker is expected to produce the first token within what
  is left of the request's time-to-first-token target (``KvAwarePolicy.first_token_ms``
  against the budget, ``Admission.by_deadline`` with the whole budget usable). Where
  the cheapest worker would miss it but another would not, the request goes to the
  cheapest one that would.

Every request here is ``interactive``. Refusals are counted per rule and not as failures:
goodput counts the streams that met both targets, and a refused request is answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.admission import Admission, AdmissionConfig

__all__ = ["GEN_MAX_LOAD", "GenAdmission"]

# sequences held over slots at which new streams are refused: past about 0.75 of the
# slots a stream's batch exceeds the ~47 sequences at which the engine's step still meets
# the TPOT target; the router's count lags finished sequences by up to a snapshot
GEN_MAX_LOAD = 0.9


@dataclass(slots=True)
class GenAdmission:
    """The router's admission strategy, driven with a generative load."""

    max_load: float = GEN_MAX_LOAD
    model: str = "chat"
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        # the whole TTFT budget is usable: it is a target, not an end-to-end deadline
        self.admission = Admission(
            AdmissionConfig(interactive_max_load=self.max_load, interactive_deadline_share=1.0)
        )

    def full(self, held: float, slots: float) -> bool:
        """True when ``held`` sequences over ``slots`` reach the ceiling."""
        load = held / slots if slots > 0 else float("nan")
        return self.admission.by_load(load, 0.0, self.model, "interactive").verdict != "admit"

    def late(self, expected_ms: float, budget_ms: float) -> bool:
        """True when the first token is expected after the budget left."""
        verdict = self.admission.by_deadline(expected_ms, budget_ms, "interactive", self.model)
        return verdict.verdict != "admit"
