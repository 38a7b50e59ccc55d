"""Offline trainers and data tools: RouterDC, routing-data collection, Sr-DPO/Sr-IPO, AlignCoT/MoTE."""
