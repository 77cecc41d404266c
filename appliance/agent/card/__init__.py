"""Residence-card (在留カード) and special permanent resident certificate chip driver.

Split so the byte-level parts stay pure and testable without a reader:
``crypto`` (key derivation, mutual authentication, secure messaging),
``apdu`` (command building, status words, BER-TLV), ``front`` (printed
entries), ``signature`` (the issuer's signature and certificate),
``session`` (the read flow) and ``reader`` (the PC/SC edge on pyscard).
The read side follows the ministry's public 在留カード等仕様書 (docs/card.md).
The address write (``keyprovider``, ``address_write``) is a *model* behind a
key-provider interface: the real write protocol and keys are not public and
must be supplied by a deployment (docs/card-write.md).
"""
