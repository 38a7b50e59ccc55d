"""Speech on the embedded default, through a live gateway (`llm-gateway serve`, no config) and the openai SDK.

Prints: the word error rate of Whisper tiny.en on the 50 sentences of Harvard lists 1-5 (IEEE 1969, public
domain), spoken by espeak-ng through /v1/audio/speech in several voices and speeds, per voice; the real-time
factors of recognition and synthesis; and the latency of a spoken question to a spoken answer through the
cascade (ASR -> SmolLM2 -> TTS).

    .venv/bin/python benchmarks/speech.py [--sentences 50]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import embedded_gateway  # noqa: E402
from gateway.wire.audio import decode_audio  # noqa: E402
from tests.support.speech import word_error_rate  # noqa: E402

HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.", "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.", "What joy there is in living.",
    "A king ruled the state in the early days.", "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.", "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.", "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.", "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.", "Mesh wire keeps chicks inside.",
]
VOICES = [("alloy", 1.0), ("onyx", 1.0), ("fable", 1.0), ("verse", 1.0), ("nova", 1.3), ("echo", 0.8)]
QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "How many days are in a week?"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=len(HARVARD))
    args = parser.parse_args()
    with embedded_gateway() as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        run(client, HARVARD[: args.sentences])


def run(client: openai.OpenAI, sentences: list[str]) -> None:
    print(f"Whisper tiny.en on {len(sentences)} Harvard sentences spoken by espeak-ng (via /v1/audio/speech)")
    print(f"{'voice':<8} {'speed':>5} {'WER %':>6} {'ASR RTF':>8} {'TTS RTF':>8}")
    all_wer, asr_rtf, tts_rtf = [], [], []
    for voice, speed in VOICES:
        errors = references = 0.0
        asr_seconds = tts_seconds = audio_seconds = 0.0
        for sentence in sentences:
            started = time.perf_counter()
            wav = client.audio.speech.create(model="espeak", voice=voice, speed=speed, input=sentence,
                                             response_format="wav").read()
            tts_seconds += time.perf_counter() - started
            duration = len(decode_audio(wav)) / 16_000
            audio_seconds += duration
            started = time.perf_counter()
            heard = client.audio.transcriptions.create(model="whisper-tiny.en", file=("s.wav", wav)).text
            asr_seconds += time.perf_counter() - started
            words = len(sentence.split())
            errors += word_error_rate(sentence, heard) * words
            references += words
        wer = 100 * errors / references
        all_wer.append(wer)
        asr_rtf.append(asr_seconds / audio_seconds)
        tts_rtf.append(tts_seconds / audio_seconds)
        print(f"{voice:<8} {speed:>5.1f} {wer:>6.1f} {asr_rtf[-1]:>8.3f} {tts_rtf[-1]:>8.3f}")
    print(f"{'all':<8} {'':>5} {statistics.mean(all_wer):>6.1f} {statistics.mean(asr_rtf):>8.3f} "
          f"{statistics.mean(tts_rtf):>8.3f}   (RTF: processing seconds per second of audio, HTTP included)")

    print("\nSpoken question -> spoken answer through the cascade (ASR -> smollm2-135m -> TTS, max_tokens 24):")
    latencies = []
    for question in QUESTIONS:
        wav = client.audio.speech.create(model="espeak", voice="alloy", input=question, response_format="wav").read()
        part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
        started = time.perf_counter()
        reply = client.chat.completions.create(model="smollm2-135m", max_tokens=24, temperature=0,
                                               messages=[{"role": "user", "content": [part]}],
                                               modalities=["text", "audio"], audio={"voice": "nova", "format": "wav"})
        latencies.append(time.perf_counter() - started)
        audio = reply.choices[0].message.audio
        print(f"  {question!r} -> {audio.transcript!r} ({len(base64.b64decode(audio.data)) / 44_100:.1f} s of "
              f"audio, {reply.usage.completion_tokens} tokens) in {latencies[-1]:.2f} s")
    print(f"  median {statistics.median(latencies):.2f} s")


if __name__ == "__main__":
    main()
