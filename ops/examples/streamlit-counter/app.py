import os

import streamlit as st

st.title("Streamlit Counter")
st.caption(f"Space: {os.environ.get('SPACE_ID', 'local')}")

if "count" not in st.session_state:
    st.session_state.count = 0
if st.button("Add one"):
    st.session_state.count += 1
st.metric("Count", st.session_state.count)
