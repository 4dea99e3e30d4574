"""The application: command line, folder and dataset jobs, pictures, reports, and the files they read and write."""
