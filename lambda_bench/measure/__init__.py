"""Measurement: what one step is (steps), timing, memory and FLOP tracking. No framework import here."""
