"""`python -m sr_augment.service --root ... --config ...`: the service process the launcher starts.

The launcher recognises its services by "sr_augment.service" in their command line, so this entry
point must stay here.
"""

from sr_augment.service.server import serve_main

if __name__ == "__main__":
    serve_main()
