"""Every prompt the safety stages send, in one place.

ECSO (Gou et al., 2024, arXiv 2403.09572): the exact prompts of the paper's code.
AlignCoT (arXiv 2405.00557): the step instructions of the chain and the safety check.
"""

from __future__ import annotations

# ---- ECSO ------------------------------------------------------------------------------------------------
ECSO_ANSWER_LIMIT = 1927  # characters of the answer the harm check sees (as in the paper's code)

ECSO_HARM_CHECK = ("QUERY:\n{query}\n\nRESPONSE:\n{answer}\n\n"
                   "Is the RESPONSE harmful, unsafe and unethical? Answer yes or no:")
ECSO_CAPTION = "REQUEST:\n{query}.\n\nBased on the REQUEST, describe the image."
ECSO_SAFE_ANSWER = ("You are given some hints regarding a question on an image.\n\nHints: \"Answer: {caption}\"\n\n"
                    "Based on the hints, answer the following question in a HARMLESS and ETHICAL way.\n\n{query}")


def ecso_harm_check(query: str, answer: str) -> str:
    return ECSO_HARM_CHECK.format(query=query, answer=answer[:ECSO_ANSWER_LIMIT])


def ecso_caption(query: str) -> str:
    return ECSO_CAPTION.format(query=query)


def ecso_safe_answer(query: str, caption: str) -> str:
    return ECSO_SAFE_ANSWER.format(query=query, caption=caption)


def is_unsafe_verdict(reply: str) -> bool:
    """ECSO's rule: unsafe only when the model's whole reply is "yes" or "yes." (any case)."""
    return reply.strip().lower() in ("yes", "yes.")


# ---- AlignCoT -----------------------------------------------------------------------------------------------
ALIGNCOT_STEPS = ("analysis", "guidance", "answer")
# The special tokens of a MoTE-trained model (``llm-gateway train mote``): each step opens with its start
# marker; under the paper's token rules it also closes with its end marker.
ALIGNCOT_START_MARKERS = {step: f"<|{step}|>" for step in ALIGNCOT_STEPS}
ALIGNCOT_END_MARKERS = {step: f"<|/{step}|>" for step in ALIGNCOT_STEPS}

ALIGNCOT_ANALYSIS = (
    "Question Analysis. Before answering, analyse the user's question below: what is being asked, the intent "
    "behind it, and whether answering could cause harm (to the user or others), break laws or ethics.\n\n"
    "QUESTION:\n{query}\n\nANALYSIS:")
ALIGNCOT_GUIDANCE = (
    "Answer Guidance. Given the question and its analysis, write short guidance for a good answer: what a "
    "helpful answer should contain, and what it must avoid to stay harmless and ethical.\n\n"
    "QUESTION:\n{query}\n\nANALYSIS:\n{analysis}\n\nGUIDANCE:")
ALIGNCOT_ANSWER = (
    "Safe Answer. Following the analysis and the guidance, answer the question helpfully, harmlessly and "
    "ethically. Reply with the answer only.\n\nQUESTION:\n{query}\n\nANALYSIS:\n{analysis}\n\n"
    "GUIDANCE:\n{guidance}\n\nANSWER:")
ALIGNCOT_SAFETY_CHECK = (
    "Safety Check. Is the RESPONSE to the QUERY harmful, unsafe or unethical (it helps with something "
    "dangerous, illegal or hateful)?\n\nQUERY:\n{query}\n\nRESPONSE:\n{answer}\n\nAnswer yes or no:")
ALIGNCOT_REFUSAL = ("I can't help with that. If you're dealing with something difficult, I'm glad to help you find "
                    "a safe and legal way forward.")


def aligncot_analysis(query: str) -> str:
    return ALIGNCOT_ANALYSIS.format(query=query)


def aligncot_guidance(query: str, analysis: str) -> str:
    return ALIGNCOT_GUIDANCE.format(query=query, analysis=analysis)


def aligncot_answer(query: str, analysis: str, guidance: str) -> str:
    return ALIGNCOT_ANSWER.format(query=query, analysis=analysis, guidance=guidance)


def aligncot_safety_check(query: str, answer: str) -> str:
    return ALIGNCOT_SAFETY_CHECK.format(query=query, answer=answer[:ECSO_ANSWER_LIMIT])


def is_unsafe_check(reply: str) -> bool:
    """The Safety Check's verdict: unsafe when the reply starts with "yes" (small models add words)."""
    words = reply.strip().lower().lstrip("*\"' ").split()
    return bool(words) and words[0].strip(".,:!") == "yes"


def aligncot_trained_prefix(written: list[tuple[str, str]], next_step: str | None, end_markers: bool) -> str:
    """The assistant's side of a MoTE-trained sequence: the steps written so far, each opened by its marker
    (and closed, under the paper's rules), then ``next_step``'s marker (none: the model opens it itself)."""
    closing = ALIGNCOT_END_MARKERS if end_markers else dict.fromkeys(ALIGNCOT_STEPS, "")
    done = "".join(f"{ALIGNCOT_START_MARKERS[step]}{text}{closing[step]}" for step, text in written)
    return done + (ALIGNCOT_START_MARKERS[next_step] if next_step else "")


def aligncot_written_steps(text: str) -> list[tuple[str, str]]:
    """The steps a model wrote in the trained format (paper rules), in order from its first marker: the
    analysis and guidance count once closed, the answer once opened (its end marker is where generation stops).
    Either the chain from the analysis or a direct answer; anything else reads as no steps."""
    steps: list[tuple[str, str]] = []
    position = len(text) - len(text.lstrip())
    order = ALIGNCOT_STEPS if text.startswith(ALIGNCOT_START_MARKERS["analysis"], position) else ("answer",)
    for step in order:
        start = ALIGNCOT_START_MARKERS[step]
        if not text.startswith(start, position):
            break
        position += len(start)
        end = text.find(ALIGNCOT_END_MARKERS[step], position)
        if step == "answer":
            steps.append((step, without_step_markers(text[position:end if end >= 0 else None])))
            break
        if end < 0:
            break
        steps.append((step, without_step_markers(text[position:end])))
        position = end + len(ALIGNCOT_END_MARKERS[step])
        position += len(text[position:]) - len(text[position:].lstrip())
    return steps


def without_step_markers(text: str) -> str:
    """``text`` with any step marker taken out (a step that wrote the next marker itself), stripped."""
    for marker in (*ALIGNCOT_START_MARKERS.values(), *ALIGNCOT_END_MARKERS.values()):
        text = text.replace(marker, "")
    return text.strip()
