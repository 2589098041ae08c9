"""The rules other than ``span``: sizes, token limit, duplicates, conflicts, leakage, scores, locales."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from nluflow.data.schema import Example
from nluflow.data.validation.policy import MAX_LOCATIONS
from nluflow.data.validation.run import Group, Run, Split
from nluflow.data.validation.text import count_tokens, excerpt, plural


def check_sizes(run: Run, tr: Split, usable: list[Example], counts: Counter[str]) -> None:
    source = tr.data.source
    policy = run.policy
    first_at: dict[str, str] = {}
    for ex, where in zip(tr.examples, tr.where, strict=True):
        first_at.setdefault(ex.intent, where)
    if run.on("min_intents") and len(counts) < policy.min_intents:
        names = ", ".join(f"'{k}'" for k in sorted(counts)) or "none"
        run.add(
            "min_intents",
            f"{source}: found {plural(len(counts), 'intent')} ({names}) in "
            f"{plural(len(usable), 'usable example')}; "
            f"expected at least {policy.min_intents}; {run.next_step('min_intents', 'training continues')}",
            max(policy.min_intents - len(counts), 1),
            [source],
        )
    small = sorted((n, k) for k, n in counts.items() if n < policy.min_examples_per_intent)
    if run.on("min_examples_per_intent") and small:
        shown = ", ".join(f"'{k}' ({n})" for n, k in small[:20]) + (" …" if len(small) > 20 else "")
        run.add(
            "min_examples_per_intent",
            f"{source}: {plural(len(small), 'intent')} {'has' if len(small) == 1 else 'have'} fewer than "
            f"{policy.min_examples_per_intent} usable training examples: {shown}; expected at least "
            f"{policy.min_examples_per_intent} per intent; "
            f"{run.next_step('min_examples_per_intent', 'training continues')}",
            len(small),
            [first_at[k] for _, k in small],
        )
    if run.on("imbalance") and len(counts) >= 2:
        (low_n, low), (high_n, high) = (
            min((n, k) for k, n in counts.items()),
            max((n, k) for k, n in counts.items()),
        )
        ratio = high_n / low_n
        if ratio > policy.max_imbalance_ratio:
            under = sorted(k for k, n in counts.items() if n * policy.max_imbalance_ratio < high_n)
            run.add(
                "imbalance",
                f"{source}: the largest intent '{high}' has {high_n} training examples and the smallest "
                f"'{low}' has {low_n} (ratio {ratio:.1f}; {plural(len(under), 'intent')} below "
                f"1/{policy.max_imbalance_ratio:g} of the largest); expected a ratio of at most "
                f"{policy.max_imbalance_ratio:g}; "
                f"{run.next_step('imbalance', 'training continues; small intents may be under-predicted')}",
                len(under),
                [first_at[k] for k in under],
            )


def check_tokens(run: Run, split: Split) -> None:
    limit = run.policy.max_tokens
    group = Group()
    for ex, where in zip(split.examples, split.where, strict=True):
        if len(ex.text) > limit:  # a text of at most `limit` characters cannot exceed `limit` tokens
            n = count_tokens(ex.text)
            if n > limit:
                group.add(where, f"{split.name} example {excerpt(ex.text, 30)} has {n} tokens")
    run.add_group(
        "token_limit",
        group,
        f"at most {limit} tokens per example",
        run.next_step("token_limit", "the model truncates or ignores the rest"),
        more=("example", "examples"),
    )


def check_duplicates(run: Run, split: Split) -> None:
    exact_first: dict[tuple[str, str], int] = {}
    norm_first: dict[tuple[str, str], int] = {}
    exact, near = Group(), Group()
    for i, ex in enumerate(split.examples):
        key = (ex.text, ex.intent)
        if key in exact_first:
            j = exact_first[key]
            exact.add(
                split.where[i],
                f"{split.name} example {excerpt(ex.text)} (intent '{ex.intent}') repeats the one at "
                f"{split.where[j]}",
            )
            continue
        exact_first[key] = i
        nkey = (split.norm[i], ex.intent)
        if nkey in norm_first:
            j = norm_first[nkey]
            near.add(
                split.where[i],
                f"{split.name} example {excerpt(ex.text)} (intent '{ex.intent}') equals "
                f"{excerpt(split.examples[j].text)} at {split.where[j]} after case folding and removing "
                "punctuation",
            )
        else:
            norm_first[nkey] = i
    if run.on("duplicate"):
        run.add_group(
            "duplicate",
            exact,
            "each example once",
            run.next_step("duplicate", "training continues; repeated examples weigh more"),
            more=("repeat", "repeats"),
        )
    if run.on("normalized_duplicate"):
        run.add_group(
            "normalized_duplicate",
            near,
            "distinct examples",
            run.next_step("normalized_duplicate", "training continues; near-repeats weigh more"),
            more=("near-repeat", "near-repeats"),
        )


def check_conflicts(run: Run, split: Split) -> None:
    by_text: dict[str, dict[str, int]] = defaultdict(dict)  # normalised text -> intent -> first index
    for i, ex in enumerate(split.examples):
        by_text[split.norm[i]].setdefault(ex.intent, i)
    group = Group()
    locations: list[str] = []
    for intents in by_text.values():
        if len(intents) < 2:
            continue
        firsts = sorted(intents.values())
        ex = split.examples[firsts[0]]
        others = ", ".join(f"'{split.examples[j].intent}' at {split.where[j]}" for j in firsts[1:4])
        group.add(
            split.where[firsts[0]],
            f"{split.name} text {excerpt(ex.text)} is labelled '{ex.intent}' here and {others}",
        )
        locations.extend(split.where[j] for j in firsts)
    group.locations = locations[:MAX_LOCATIONS]
    run.add_group(
        "conflict",
        group,
        "one intent per text",
        run.next_step("conflict", "training continues with contradictory labels"),
        more=("conflicting text", "conflicting texts"),
    )


def check_leakage(run: Run, tr: Split, te: Split) -> None:
    train_at: dict[str, int] = {}
    for i, norm in enumerate(tr.norm):
        train_at.setdefault(norm, i)
    train_texts = {e.text for e in tr.examples}
    leaked: list[tuple[int, int]] = [(i, train_at[n]) for i, n in enumerate(te.norm) if n in train_at]
    if not leaked:
        return
    exact = sum(te.examples[i].text in train_texts for i, _ in leaked)
    i, j = leaked[0]
    verb = "occurs" if len(leaked) == 1 else "occur"
    run.add(
        "leakage",
        f"{te.where[i]}: {plural(len(leaked), 'test example')} also {verb} in the training set "
        f"({exact} exact, {len(leaked) - exact} after case folding and removing punctuation), e.g. "
        f"{excerpt(te.examples[i].text)} as {excerpt(tr.examples[j].text)} at {tr.where[j]}; expected test "
        "texts the training set does not contain; "
        + run.next_step("leakage", "evaluation continues; scores on these examples overstate generalisation"),
        len(leaked),
        [te.where[k] for k, _ in leaked],
    )


def check_scores(run: Run, split: Split) -> None:
    scored = [
        (ex.score, w) for ex, w in zip(split.examples, split.where, strict=True) if ex.score is not None
    ]
    if not scored:
        return
    mean = math.fsum(s for s, _ in scored) / len(scored)
    minimum = run.policy.min_mean_score
    if mean >= minimum - 1e-12:  # a tolerance so that n copies of the minimum pass despite rounding
        return
    low = sorted((s, w) for s, w in scored if s < minimum) or sorted(scored)
    run.add(
        "annotation_score",
        f"{split.data.source}: mean annotation score of "
        f"{plural(len(scored), f'scored {split.name} example')} "
        f"is {mean:.3f} ({plural(len(low), 'example')} below {minimum:g}; lowest {low[0][0]:.2f} at "
        f"{low[0][1]}); expected a mean of at least {minimum:g}; "
        f"{run.next_step('annotation_score', 'training continues on low-confidence labels')}",
        len(low),
        [w for _, w in low],
    )


def check_locales(run: Run, splits: list[Split]) -> None:
    allowed = set(run.policy.locales)
    groups: dict[str, Group] = defaultdict(Group)
    for split in splits:
        for ex, where in zip(split.examples, split.where, strict=True):
            if ex.locale is not None and ex.locale not in allowed:
                groups[ex.locale].add(where, f"locale {ex.locale!r}")
    expected = f"one of {', '.join(run.policy.locales) or '(no locales allowed)'}"
    for locale in sorted(groups):
        group = groups[locale]
        group.detail = f"{group.detail} in {plural(group.count, 'example')}"
        run.add(
            "unknown_locale",
            f"{group.locations[0]}: {group.detail}; expected {expected}; "
            f"{run.next_step('unknown_locale', 'training continues with these examples')}",
            group.count,
            group.locations,
        )
