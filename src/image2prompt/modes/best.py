"""Best mode: a greedy chain over the best phrases, then the best of caption, classic, fast and chain.

The chain adds, at each step, the phrase that raises the whole prompt's similarity most (at least ``min_flavors``
steps, at most ``max_flavors``, stopping at the token window). ``beam > 1`` keeps several prompts per step. Past the
encoders' window the rest of the budget is filled in order of the phrases' own scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ..features import Features
from ..results import Phrase
from ..search import ChainState
from ..syntax import SEPARATOR
from .base import Chain, Outcome, Scored, SearchContext, Task, chain_steps, with_rejected
from .classic import classic_candidate
from .fast import fast_candidate


class BestMode:
    name = "best"
    uses_caption = True
    uses_beam = True  # the chain keeps SearchSettings.beam prompts per step (turbo inherits it)

    def needs_caption(self, has_captioner: bool) -> bool:
        return True

    def pool_size(self, ctx: SearchContext) -> int:
        return ctx.settings.candidates

    def chain_options(self, ctx: SearchContext) -> dict[str, object]:
        return {}

    def plan(self, ctx: SearchContext, batch: Sequence[Features]) -> list[Task]:
        s = ctx.settings
        pools = [ctx.top_merged(feats, self.pool_size(ctx), floored=True) for feats in batch]
        starts = ctx.similarities([(feats, feats.caption or "") for feats in batch])  # one text batch
        tasks = []
        for feats, pool, sim in zip(batch, pools, starts):
            def chain_over(phrases: list[Phrase], f: Features = feats, start: float = sim) -> Chain:
                state = ChainState([p.text for p in phrases], ctx.at_limit, start=f.caption or "",
                                   start_similarity=start, min_count=s.min_flavors, max_count=s.max_flavors,
                                   beam=s.beam, fits=ctx.fits, **self.chain_options(ctx))  # type: ignore[arg-type]
                return Chain(f, state, ctx.indexes)

            chains = [chain_over(pool)]
            plain: list[Phrase] | None = None
            if s.floor is not None and s.trace:  # what the unfloored chain would have used: run it too
                plain = ctx.top_merged(feats, self.pool_size(ctx))
                chains.append(chain_over(plain))
            tasks.append(Task(chains, partial(self.finish, ctx, feats, chains, pool, plain)))
        return tasks

    def finish(self, ctx: SearchContext, feats: Features, chains: list[Chain], pool: list[Phrase],
               plain: list[Phrase] | None = None) -> Outcome:
        """``chains[0]`` searched ``pool``; with the floor and ``trace``, ``chains[1]`` searched
        ``plain``, the unfloored pool."""
        s = ctx.settings
        caption = feats.caption or ""
        chain = chains[0]
        result = chain.state.result()
        by_text = {p.text: p for p in pool}
        chained = Scored(result.prompt, [by_text[t] for t in result.phrases], "chain")
        if s.max_tokens > ctx.window:
            chained = extend_past_window(ctx, chained, pool)
        # As in the reference, the classic candidate here uses max_flavors flavors.
        # (Their own rejected lists are not built: best mode lists its own, below.)
        candidates = [
            Scored(caption, [], "caption"),
            classic_candidate(ctx, feats, caption, s.max_flavors, list_rejected=False),
            fast_candidate(ctx, feats, caption, s.max_flavors, list_rejected=False),
            chained,
        ]
        outcome = Outcome(candidates, score=True, steps=chain_steps(chain.state))
        if s.floor is None:
            return outcome
        # whichever candidate wins, what the unfloored search would have used
        unfloored = (chains[1], plain) if plain is not None else None
        return with_rejected(outcome, rejected_by_floor(ctx, feats, unfloored, self.pool_size(ctx)))


def rejected_by_floor(ctx: SearchContext, feats: Features, unfloored: tuple[Chain, list[Phrase]] | None,
                      pool_size: int) -> list[Phrase]:
    """The phrases the floor kept out that the unfloored search would have used: exactly, from
    the unfloored chain and its pool, when it ran (``trace``); otherwise the unfloored pool's
    first ``max_flavors`` phrases (the ones fast mode would take) that do not clear the floor."""
    if unfloored is not None:
        chain, plain = unfloored
        by_text = {p.text: p for p in plain}
        used = [by_text[t] for t in chain.state.result().phrases]
    else:
        used = ctx.top_merged(feats, min(pool_size, ctx.settings.max_flavors))
    return [p for p in used if not ctx.clears_floor(p, feats)]


def extend_past_window(ctx: SearchContext, scored: Scored, pool: Sequence[Phrase]) -> Scored:
    """Past the CLIP window the encoder cannot score additions, so the remaining budget
    is filled with the pool's next phrases in order of their own scores."""
    used = {p.text for p in scored.phrases}
    prompt, phrases = scored.prompt, list(scored.phrases)
    for p in pool:
        if p.text in used:
            continue
        candidate = prompt + SEPARATOR + p.text
        if not ctx.fits(candidate):
            break
        prompt = candidate
        phrases.append(p)
    return Scored(prompt, phrases, scored.name, scored.rejected)
