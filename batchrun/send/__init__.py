"""Sending: rows to requests, the HTTP transport, the dispatcher that paces, retries and
prices every attempt, the budget, the early stop of a misconfigured job, and the advice a
slow run gets.

Hands each ``(Request, Result)`` pair to the engine's pipeline, which stores it.
"""
