"""``python -m appliance.image build|verify|lock``."""

from .cli import main

main()
