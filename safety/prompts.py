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
