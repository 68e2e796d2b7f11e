"""The dashboard's pages, run by Streamlit as scripts (see dashboard/app.py)."""
