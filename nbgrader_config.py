"""nbgrader's configuration for the course (README, "nbgrader"): copy it into the course directory.

The notebooks carry nbgrader's cell metadata: each exercise is a solution cell, the check after it a locked
1-point autograder test, each open question a manually graded 2-point written answer.
"""
c = get_config()  # noqa: F821 (nbgrader defines it when it reads this file)

c.CourseDirectory.course_id = "clip-kit"

# A notebook's first model load trains and caches the mini-CLIP (minutes on a laptop CPU; nbgrader's default
# is 30 s per cell, which interrupts the kernel). Later runs load the cache in seconds. Export CLIP_KIT_DATA_DIR
# (an absolute folder, its cache built once: README, "nbgrader") before `nbgrader autograde`, and every submission
# loads that one cache instead of training its own in its autograded/ folder.
c.ExecutePreprocessor.timeout = 1800

# Running a notebook writes its downloads and caches (data/, with the mini-CLIP's checkpoint) and its figures
# (outputs/) beside it: never copy them into a release, a submission or a feedback folder.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "data", "outputs"]
