"""Residence-card (在留カード) and special permanent resident certificate chip driver.

Split so the byte-level parts stay pure and testable without a reader:
``crypto`` (key derivation, mutual authentication, secure messaging),
``apdu`` (command building, status words, BER-TLV), ``reader`` (the PC/SC
edge on pyscard) and ``session`` (the read flow). Only the public read side
of the ministry's 在留カード等仕様書 is implemented; see docs/card.md.
"""
