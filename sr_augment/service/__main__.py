"""`python -m sr_augment.service --dir ... --sid ... --config ...`: the service process the launcher starts.

The launcher recognises its services by "sr_augment.service", "--dir FOLDER" and "--sid SID" in their
command line (/proc), so this entry point and those arguments must stay.
"""

from sr_augment.service.server import serve_main

if __name__ == "__main__":
    serve_main()
