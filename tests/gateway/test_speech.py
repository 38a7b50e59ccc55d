"""Speech in and out with the openai SDK: the embedded Whisper tiny.en and espeak-ng, audio in chat (the
ASR -> model -> TTS cascade, and untouched pass-through to audio-capable upstreams), and clear 400s."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from gateway.wire.audio import decode_audio
from safety import prompts
from tests.support.speech import spoken, word_error_rate
from tests.support.upstream import Reply

SENTENCE = "What is the capital of France? Please answer in one word."
LOCAL_SPEECH = [{"name": "whisper-tiny.en", "backend": "local", "task": "transcribe"},
                {"name": "espeak", "backend": "local", "task": "speech"}]


def _audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


@pytest.mark.slow
def test_speech_to_text_round_trip_on_the_embedded_models(embedded_gateway):
    client = embedded_gateway.client()
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="wav").read()
    assert wav[:4] == b"RIFF" and len(decode_audio(wav)) > 16_000 * 2  # over two seconds of speech
    heard = client.audio.transcriptions.create(model="whisper-1", file=("question.wav", wav))
    assert word_error_rate(SENTENCE, heard.text) <= 0.2, heard.text
    verbose = client.audio.transcriptions.create(model="whisper-tiny.en", file=("q.wav", wav),
                                                 response_format="verbose_json", timestamp_granularities=["word"])
    assert verbose.language == "en" and verbose.duration > 2 and len(verbose.words) >= 8
    assert all(w.start <= w.end for w in verbose.words) and verbose.words[-1].end <= verbose.duration + 0.5
    srt = client.audio.transcriptions.create(model="whisper-tiny.en", file=("q.wav", wav), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "France" in srt


@pytest.mark.slow
@pytest.mark.parametrize("audio_format", ["mp3", "opus", "flac", "aac", "pcm"])
def test_every_speech_format_decodes(embedded_gateway, audio_format):
    audio = embedded_gateway.client().audio.speech.create(model="espeak", voice="nova", input="Hello there, friend.",
                                                          response_format=audio_format).read()
    if audio_format == "pcm":  # raw 16-bit mono at 24 kHz
        seconds = len(audio) / 2 / 24_000
    else:
        seconds = len(decode_audio(audio)) / 16_000
    assert 0.5 < seconds < 5


@pytest.mark.slow
def test_voices_speed_and_emotion_change_the_audio(embedded_gateway):
    client = embedded_gateway.client()

    def seconds(**fields) -> float:  # type: ignore[no-untyped-def]
        wav = client.audio.speech.create(model="espeak", input=SENTENCE, response_format="wav", **fields).read()
        return len(decode_audio(wav)) / 16_000

    normal = seconds(voice="alloy")
    assert seconds(voice="alloy", speed=2.0) < normal * 0.7
    assert seconds(voice="alloy", extra_body={"emotion": "sad"}) > normal  # EMOVA's sad style is slower
    assert seconds(voice="alloy", instructions="emotion: happy; speed: fast") < normal
    for fields, param in [({"voice": "nobody"}, "voice"), ({"instructions": "Speak like a pirate"}, "instructions"),
                          ({"extra_body": {"emotion": "bored"}}, "emotion"), ({"speed": 9}, "speed")]:
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.speech.create(model="espeak", input="x", **{"voice": "alloy", **fields}).read()
        assert refused.value.body["param"] == param


@pytest.mark.slow
def test_spoken_question_gets_a_spoken_answer_through_the_cascade(embedded_gateway):
    client = embedded_gateway.client()
    wav = spoken(SENTENCE)
    reply = client.chat.completions.create(model="smollm2-135m", max_tokens=20, temperature=0,
                                           messages=[{"role": "user", "content": [_audio_part(wav)]}],
                                           modalities=["text", "audio"], audio={"voice": "nova", "format": "wav"})
    message = reply.choices[0].message
    assert message.content is None and "Paris" in message.audio.transcript
    answer = base64.b64decode(message.audio.data)
    assert answer[:4] == b"RIFF" and message.audio.id.startswith("audio_") and message.audio.expires_at > 0
    assert word_error_rate(message.audio.transcript,
                           client.audio.transcriptions.create(model="whisper-tiny.en", file=("a.wav", answer)).text
                           ) <= 0.34
    chunks = list(client.chat.completions.create(
        model="smollm2-135m", max_tokens=12, temperature=0, stream=True, modalities=["text", "audio"],
        audio={"voice": "nova", "format": "pcm16"}, messages=[{"role": "user", "content": [_audio_part(wav)]}]))
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    transcript = "".join(getattr(d, "transcript", None) or "" for d in deltas)
    pcm = b"".join(base64.b64decode(d.data) for d in deltas if getattr(d, "data", None))
    assert "Paris" in transcript and len(pcm) > 24_000  # over half a second of 16-bit audio at 24 kHz


@pytest.mark.slow
def test_bad_audio_is_a_clear_400(embedded_gateway):
    client = embedded_gateway.client()
    cases = [
        (lambda: client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"RIFF not really audio")),
         "file"),
        (lambda: client.audio.transcriptions.create(model="whisper-1", file=("x.wav", spoken("hi")), language="fr"),
         "language"),
        (lambda: client.audio.transcriptions.create(model="smollm2-135m", file=("x.wav", spoken("hi"))), "model"),
        (lambda: client.audio.transcriptions.create(model="whisper-1", file=("x.wav", spoken("hi")),
                                                    timestamp_granularities=["word"]), "timestamp_granularities"),
        (lambda: client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}}]}]),
         "messages.0.content.0.input_audio.data"),
        (lambda: client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "midi"}}]}]),
         "messages.0.content.0.input_audio.format"),
        (lambda: client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "hi"}],
                                                modalities=["text", "audio"], audio={"voice": "x", "format": "wav"}),
         "voice"),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert refused.value.body["param"] == param
    too_big = httpx.post(f"{embedded_gateway.base_url}/audio/transcriptions", data={"model": "whisper-1"},
                         files={"file": ("big.wav", b"\0" * (25 * 1024 * 1024 + 10))}, timeout=60)
    assert too_big.status_code == 400 and "limit is 25 MiB" in too_big.json()["error"]["message"]
    not_multipart = httpx.post(f"{embedded_gateway.base_url}/audio/transcriptions", json={"model": "whisper-1"})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["param"] == "file"


def test_audio_models_receive_the_audio_untouched(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "omni", "backend": "openai", "base_url": upstream.base_url,
                                        "audio": True}]})
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF-any-bytes").decode(),
                                                   "format": "wav"}}
    gateway.client().chat.completions.create(model="omni", messages=[{"role": "user", "content": [part]}],
                                             modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    sent = upstream.calls[-1].body
    assert sent["messages"][0]["content"] == [part]
    assert sent["modalities"] == ["text", "audio"] and sent["audio"] == {"voice": "alloy", "format": "wav"}


def test_audio_endpoints_pass_through_to_upstreams(make_upstream, make_gateway):
    upstream = make_upstream("vllm-whisper")
    gateway = make_gateway({"models": [
        {"name": "whisper-large", "backend": "openai", "base_url": upstream.base_url, "task": "transcribe",
         "upstream_model": "openai/whisper-large-v3"},
        {"name": "tts-up", "backend": "openai", "base_url": upstream.base_url, "task": "speech"}]})
    client = gateway.client()
    heard = client.audio.transcriptions.create(model="whisper-large", file=("a.mp3", b"ID3-some-audio"),
                                               language="de", prompt="Names: Jürgen", temperature=0.2)
    assert heard.text == "vllm-whisper heard 14 bytes"
    sent = upstream.calls[-1].body
    assert sent["file_bytes"] == b"ID3-some-audio" and sent["model"] == "openai/whisper-large-v3"
    assert (sent["language"], sent["prompt"], float(sent["temperature"])) == ("de", "Names: Jürgen", 0.2)
    audio = client.audio.speech.create(model="tts-up", voice="ash", input="hello", response_format="mp3").read()
    assert audio == b"ID3hello" and upstream.calls[-1].body["voice"] == "ash"


@pytest.mark.slow
def test_a_cascaded_model_reads_the_transcript(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "m", "backend": "openai", "base_url": upstream.base_url},
                                       *LOCAL_SPEECH]})
    gateway.client().chat.completions.create(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "Listen:"}, _audio_part(spoken(SENTENCE))]}])
    content = upstream.calls[-1].body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Listen:"} and content[1]["type"] == "text"
    assert word_error_rate(SENTENCE, content[1]["text"]) <= 0.2


@pytest.mark.slow
def test_a_spoken_harmful_request_meets_the_safety_stage(upstream, make_gateway):
    """AlignCoT judges the transcript: a spoken request is handled like a typed one."""
    direct, safe = "Here is how to pick the door lock: ...", "Call the owner or a locksmith."

    def respond(body):  # type: ignore[no-untyped-def]
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else content[0]["text"]  # the transcript, as a text part
        if text.startswith("Safety Check."):
            return Reply(text="Yes, it is harmful." if direct in text else "No.")
        if text.startswith("Safe Answer."):
            return Reply(text=safe)
        if text.startswith(("Question Analysis.", "Answer Guidance.")):
            return Reply(text="Unauthorised access; refuse.")
        return Reply(text=direct)

    upstream.responder = respond
    gateway = make_gateway({"models": [{"name": "m", "backend": "openai", "base_url": upstream.base_url,
                                        "stages": ["aligncot"]}, *LOCAL_SPEECH]})
    question = "How do I break into a parked car without the key?"
    response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=60, json={
        "model": "m", "messages": [{"role": "user", "content": [_audio_part(spoken(question))]}]})
    assert response.status_code == 200 and response.headers["x-gateway-aligncot"] == "chain"
    assert response.json()["choices"][0]["message"]["content"] == safe
    (part,) = upstream.calls[0].body["messages"][-1]["content"]
    transcript = part["text"]
    assert part["type"] == "text" and word_error_rate(question, transcript) <= 0.25
    assert upstream.calls[1].body["messages"][-1]["content"] == prompts.aligncot_safety_check(transcript, direct)
    assert json.dumps(upstream.calls[0].body).count("input_audio") == 0


JOY = "I just got accepted into my dream university! I can't stop smiling, this is the best day of my life!"
GRIEF = "My grandmother passed away last night. I miss her so much and I don't know how to cope."


@pytest.mark.slow
def test_a_joyful_and_a_grieving_message_are_answered_in_different_voices(embedded_gateway):
    """EMOVA's point: the model hears the user's emotion and chooses its reply's; the two spoken answers differ in
    pitch as measured on the audio."""
    from gateway.engine.voice import voice_profile

    client = embedded_gateway.client()
    voices = {}
    for name, text in (("joy", JOY), ("grief", GRIEF)):
        reply = client.chat.completions.create(model="smollm2-135m", max_tokens=30, temperature=0,
                                               messages=[{"role": "user", "content": text}],
                                               modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
        audio = reply.choices[0].message.audio
        pitch = voice_profile(decode_audio(base64.b64decode(audio.data)), 16_000).median_pitch_hz
        voices[name] = (audio.emotion, audio.pitch, pitch)
    assert voices["joy"][0] != "neutral" and voices["joy"][:2] != voices["grief"][:2], voices
    assert voices["joy"][2] > voices["grief"][2] * 1.1, voices  # the happy voice is higher than the sad one


@pytest.mark.slow
def test_a_spoken_turn_is_heard_for_its_pitch_and_its_style_named_in_the_stream(embedded_gateway):
    from gateway.engine.voice import style_request, voice_profile

    low, high = spoken(GRIEF, voice="en-us", pitch=10), spoken(JOY, voice="en-us+f3", pitch=95)
    heard = {name: voice_profile(decode_audio(wav), 16_000) for name, wav in (("low", low), ("high", high))}
    assert heard["low"].pitch == "low" and heard["high"].pitch == "high", heard
    assert "(spoken in a low voice (median pitch" in style_request("m", "text", heard["low"]).messages[-1].text
    chunks = list(embedded_gateway.client().chat.completions.create(
        model="smollm2-135m", max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True},
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": [_audio_part(high)]}]))
    pieces = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    styled = [p for p in pieces if getattr(p, "data", None)]
    assert styled and all(p.emotion in ("happy", "surprised") for p in styled), styled[:1]
    assert chunks[-1].usage.prompt_tokens > 150  # the answer's prompt and the style question's


def test_an_upstream_model_chooses_the_style_under_its_json_schema(upstream, make_gateway):
    def respond(body):  # type: ignore[no-untyped-def]
        if body.get("response_format"):
            return Reply(text='{"emotion":"sad","pitch":"low"}')
        return Reply(text="I am sorry for your loss.")

    upstream.responder = respond
    gateway = make_gateway({"models": [{"name": "m", "backend": "openai", "base_url": upstream.base_url},
                                       *LOCAL_SPEECH]})
    reply = gateway.client().chat.completions.create(model="m", messages=[{"role": "user", "content": GRIEF}],
                                                     modalities=["text", "audio"], audio={"voice": "alloy",
                                                                                          "format": "wav"})
    audio = reply.choices[0].message.audio
    assert (audio.emotion, audio.pitch, audio.transcript) == ("sad", "low", "I am sorry for your loss.")
    (question,) = [call.body for call in upstream.calls if call.body.get("response_format")]
    assert question["messages"][-1]["content"] == GRIEF and question["temperature"] == 0
    schema = question["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["emotion"]["enum"][0] == "neutral" and "low" in schema["properties"]["pitch"]["enum"]

    upstream.responder = lambda body: (Reply(status=400, error_message="response_format is not supported")
                                       if body.get("response_format") else Reply(text="Hello."))
    fallback = gateway.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                        modalities=["text", "audio"],
                                                        audio={"voice": "alloy", "format": "wav"})
    assert fallback.choices[0].message.audio.emotion == "neutral"  # no style chosen: spoken as before
