"""EMOVA in the speech cascade, measured: does the model hear the user's emotion and answer in a fitting voice?

    .venv/bin/python benchmarks/emova_styles.py

Thirty messages written for this benchmark, ten each joyful, grieving and neutral, go to the embedded gateway
(no config) as chat asking for a spoken answer (``modalities: ["text", "audio"]``), typed and spoken (espeak-ng
reads each one, at a high pitch for the joyful ones, low for the grieving, normal for the neutral, so the clip's
voice is part of what the model is told). Printed per kind of message: the emotion and pitch the model chose
(counts), and the median pitch measured on the spoken answers. Then the style question alone, with and without
its worked examples, on the typed messages (what the examples are for).
"""

from __future__ import annotations

import base64
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import embedded_gateway  # noqa: E402
from gateway.engine.voice import style_of, style_request, voice_profile  # noqa: E402
from gateway.wire.audio import ASR_SAMPLE_RATE, decode_audio  # noqa: E402

MESSAGES = {
    "joyful": ["I just got accepted into my dream university! This is the best day of my life!",
               "We're having a baby! My wife just told me and I'm over the moon!",
               "I finally finished my first marathon and I feel amazing!",
               "My best friend surprised me with tickets to my favourite band, I'm so excited!",
               "I got the promotion I worked so hard for, I can't stop smiling!",
               "Our team won the championship last night, what a feeling!",
               "My grandmother recovered fully from her surgery, we're all so happy!",
               "I passed my driving test on the first try!",
               "We just adopted the cutest puppy and the kids are thrilled!",
               "My novel is going to be published, my dream came true!"],
    "grieving": ["My grandmother passed away last night. I miss her so much.",
                 "Our family dog died today after fourteen years. The house feels so empty.",
                 "I lost my job today and I don't know how I'll pay the rent.",
                 "My best friend moved across the world and I feel so alone.",
                 "I failed my final exam and have to repeat the whole year. I feel terrible.",
                 "My father is very sick in hospital and the doctors aren't hopeful.",
                 "My marriage is falling apart and I cry every night.",
                 "I had a miscarriage last week and I can't stop thinking about it.",
                 "My house burned down and we lost everything we owned.",
                 "Today is the anniversary of my brother's death and it still hurts so much."],
    "neutral": ["What time does the library open on Saturdays?", "How many days are there in a leap year?",
                "What is the capital of Australia?", "Can you convert ten miles into kilometres?",
                "What is the boiling point of water at sea level?", "How do I reset my email password?",
                "Which planet is closest to the sun?", "What does a thermometer measure?",
                "How many legs does a spider have?", "What is the plural of mouse?"],
}
SPOKEN_PITCH = {"joyful": ("en-us+f3", 95), "grieving": ("en-us", 10), "neutral": ("en-us", 50)}


def spoken(text: str, voice: str, pitch: int) -> bytes:
    return subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "--stdout"], input=text.encode(),
                          capture_output=True, check=True, timeout=60).stdout


def answer(client: openai.OpenAI, content: object) -> tuple[str, str, float]:
    reply = client.chat.completions.create(model="smollm2-135m", max_tokens=40, temperature=0,
                                           messages=[{"role": "user", "content": content}],
                                           modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    audio = reply.choices[0].message.audio
    pitch = voice_profile(decode_audio(base64.b64decode(audio.data)), ASR_SAMPLE_RATE).median_pitch_hz
    return audio.emotion, audio.pitch, pitch or float("nan")


def main() -> None:
    with embedded_gateway() as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        for mode in ("typed", "spoken"):
            print(f"{mode} messages -> chosen style (counts) | median pitch of the spoken answers")
            for kind, texts in MESSAGES.items():
                results = []
                for text in texts:
                    if mode == "typed":
                        content: object = text
                    else:
                        wav = spoken(text, *SPOKEN_PITCH[kind])
                        content = [{"type": "input_audio", "input_audio": {
                            "data": base64.b64encode(wav).decode(), "format": "wav"}}]
                    results.append(answer(client, content))
                emotions = Counter(r[0] for r in results).most_common()
                pitches = Counter(r[1] for r in results).most_common()
                print(f"  {kind:<9} emotion {dict(emotions)}  pitch {dict(pitches)}  | "
                      f"{statistics.median(r[2] for r in results):.0f} Hz", flush=True)
        print("the style question alone (typed messages), emotion counts:")
        for label, examples in (("with its worked examples", None), ("bare", ())):
            row = []
            for kind, texts in MESSAGES.items():
                chosen = Counter()
                for text in texts:
                    question = style_request("smollm2-135m", text, None,
                                             **({} if examples is None else {"examples": examples}))
                    reply = client.chat.completions.create(**question.model_dump(exclude_none=True))
                    style = style_of(reply.choices[0].message.content or "")
                    chosen[style.emotion if style else "(none)"] += 1
                row.append(f"{kind} {dict(chosen.most_common())}")
            print(f"  {label:<26}" + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
