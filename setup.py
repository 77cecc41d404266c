from setuptools import Extension, setup

setup(ext_modules=[Extension("common.juki._scan", ["common/juki/_scan.c"], optional=True)])
